"""segicl: a medical vision generalist. `SegICLPipeline` segments from an instruction and examples (the SegICL
engine, this package); `MVGPipeline` runs in-context image-to-image tasks (the MVG engine, `mvg_head`).

    from segicl import SegICLPipeline
    result = SegICLPipeline.from_pretrained().segment("scan.nii.gz", text="Segment the thalamus",
                                                      examples=[("example.nii.gz", "example_mask.nii.gz")])
    result.save("mask.nii.gz")

The pipelines are imported on first use, so `import segicl` stays light (no torch until a pipeline is asked for).
"""
import logging

# diffusers and peft import bitsandbytes whenever it is installed (it is, for the optional 4-bit QLoRA path). On a CPU
# with AVX512-BF16, bitsandbytes then tries to fetch an optional 4-bit kernel from a model hub through the `kernels`
# package and, without it, logs "Failed to load CPU gemm_4bit_forward from kernels-community" before falling back to
# its built-in kernel, which is correct. No hub is reachable offline, so the notice says nothing a user can act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["SegICLPipeline", "MVGPipeline", "Settings", "VolumeSegmentation"]


def __getattr__(name: str):
    if name == "SegICLPipeline":
        from segicl.pipeline import SegICLPipeline

        return SegICLPipeline
    if name in ("Settings", "VolumeSegmentation"):
        from segicl import volume

        return getattr(volume, name)
    if name == "MVGPipeline":
        from mvg_head.pipeline import MVGPipeline

        return MVGPipeline
    raise AttributeError(f"module 'segicl' has no attribute {name!r}")
