"""comfyui-edicho: consistent edits across several photos of one subject (Edicho, arXiv 2412.21079)."""

# Served at /extensions/<install folder>/: the node library's help pages are web/docs/<NodeId>.md.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import EdichoExtension

    return EdichoExtension()
