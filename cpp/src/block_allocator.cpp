#include "fastpage/block_allocator.h"
