"""The three tasks of Nexus-Gen, named once for the whole package: understand, generate, edit.

* understand: image(s) + question -> text;
* generate: description -> image;
* edit: image + instruction -> image.

Every place that names a task uses these words: a message record's "task", the prompt templates, ShapesWorld
samples, training configs (`data.tasks`), `nexusgen eval shapes --tasks` and `nexusgen prepare-embeds
--kind`. The benchmark's files keep their section names (understanding / generation / editing in
results.json, which other programs read; `nexusgen.eval.shapes`).
"""

UNDERSTAND, GENERATE, EDIT = "understand", "generate", "edit"
TASKS = (UNDERSTAND, GENERATE, EDIT)
IMAGE_TASKS = (GENERATE, EDIT)
"""The tasks whose answer is an image: the AR model predicts its embeddings, a decoder draws it."""
