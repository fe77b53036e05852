from twotower.hookspecs import hookimpl


@hookimpl
def register_formats(register):
    from twotower.export.onnx import OnnxFormat
    from twotower.export.torch_export import TorchExportFormat
    from twotower.export.torchscript import TorchScriptFormat

    register("onnx", OnnxFormat)
    register("torchscript", TorchScriptFormat)
    register("torch-export", TorchExportFormat)
