"""SegICL: text + in-context example segmentation."""
import logging

# diffusers and peft import bitsandbytes whenever it is installed (it is, for the optional 4-bit QLoRA path). On a CPU
# with AVX512-BF16, bitsandbytes then tries to fetch an optional 4-bit kernel from a model hub through the `kernels`
# package and, without it, logs "Failed to load CPU gemm_4bit_forward from kernels-community" before falling back to
# its built-in kernel, which is correct. No hub is reachable offline, so the notice says nothing a user can act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
