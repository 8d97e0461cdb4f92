"""Data stages: find and validate photos (:mod:`.scan`), split them (:mod:`.split`), decode
them (:mod:`.images`) and feed them to Keras (:mod:`.pipeline`)."""
