from twotower.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    from twotower.data import files, movielens, synthetic

    register("movielens-100k", movielens.load_for_config)
    register("files", files.load)
    register("synthetic", synthetic.load)
