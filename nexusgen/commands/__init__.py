"""The edge of the package: one module per command family of the `nexusgen` command line.

`nexusgen.cli` builds the parser and hands the parsed `argparse.Namespace` to a handler here; every
Namespace stops in this package, and each handler calls library functions with typed arguments.

    infer     understand, generate, edit, chat, embed   (over `nexusgen.api.NexusGen`)
    demo      the ShapesWorld demo with the bundled model
    train     train, export-checkpoint                 (over `nexusgen.recipes` and `nexusgen.train`)
    data      prepare-embeds                           (`nexusgen.data.prepare`)
    convert   convert                                  (`nexusgen.convert.official`)
    eval      eval shapes, the public-benchmark exports, eval understand   (`nexusgen.eval`)
    bench     bench ar|decoder|e2e|train|serve         (`nexusgen.bench`)
    serve     serve                                    (`nexusgen.serve`: the HTTP server)
    common    input checks before heavy imports, atomic outputs, one-line warnings
"""
