"""comfyui-edicho: consistent edits across several photos of one subject (Edicho, arXiv 2412.21079)."""


async def comfy_entrypoint():
    from .nodes import EdichoExtension

    return EdichoExtension()
