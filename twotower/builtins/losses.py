from twotower.hookspecs import hookimpl


@hookimpl
def register_losses(register):
    from twotower.losses import FullSoftmax, InBatchSoftmax, LogQSoftmax, MixedNegatives

    register("inbatch-softmax", InBatchSoftmax)
    register("logq-softmax", LogQSoftmax)
    register("full-softmax", FullSoftmax)
    register("mixed-negatives", MixedNegatives)
