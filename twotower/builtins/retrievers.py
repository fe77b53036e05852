from twotower.hookspecs import hookimpl


@hookimpl
def register_retrievers(register):
    from twotower.retrievers.exact import ExactRetriever
    from twotower.retrievers.hnsw import HnswRetriever

    register("exact", ExactRetriever)
    register("hnsw", HnswRetriever)
