from twotower.hookspecs import hookimpl


@hookimpl
def register_formats(register):
    pass
