"""Stop strings: find them in a sequence's growing text, and hold back text that may be the
beginning of one until it is resolved (so a streamed stop string never reaches the user)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StopMatch:
    stop: str
    text_end: int  # the output text ends here (before the stop string, or after it when included)


class StopChecker:
    def __init__(self, stop: list[str], include_stop_str_in_output: bool):
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self._max_len = max((len(s) for s in self.stop), default=0)

    def find(self, text: str, num_new_chars: int) -> StopMatch | None:
        """The earliest stop string that ends within the last `num_new_chars` characters."""
        if not self.stop or num_new_chars == 0:
            return None
        search_from = max(0, len(text) - num_new_chars - self._max_len + 1)
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = text.find(stop, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        return StopMatch(stop, index + len(stop) if self.include_stop_str_in_output else index)

    def visible_length(self, text: str) -> int:
        """How much of an unfinished text can be shown: all of it but a tail that is a proper
        prefix of a stop string (it could still become one). An included stop string needs no
        holding back: what precedes and contains it is shown either way."""
        if not self.stop or self.include_stop_str_in_output:
            return len(text)
        held = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), held, -1):
                if stop[length - 1] == text[-1] and text.endswith(stop[:length]):
                    held = length
                    break
        return len(text) - held
