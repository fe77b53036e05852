from twotower.hookspecs import hookimpl


@hookimpl
def register_user_encoders(register):
    from twotower.towers.gru import GRUEncoder
    from twotower.towers.mean import MeanEncoder
    from twotower.towers.transformer import TransformerEncoder

    register("transformer", TransformerEncoder)
    register("gru", GRUEncoder)
    register("mean", MeanEncoder)
