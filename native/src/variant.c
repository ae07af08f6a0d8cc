#include "lepton/common.h"

#if defined(LK_WITH_CUDA)
int lk_variant(void) { return 2; }
const char *lk_variant_name(void) { return "cuda"; }
#elif defined(__ARM_NEON) && !defined(LK_FORCE_PORTABLE)
int lk_variant(void) { return 1; }
const char *lk_variant_name(void) { return "neon"; }
#else
int lk_variant(void) { return 0; }
const char *lk_variant_name(void) { return "ref"; }
#endif
