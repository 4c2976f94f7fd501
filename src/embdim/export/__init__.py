"""Export dimension plans and trained embedding tables to other frameworks.

* :mod:`embdim.export.torchrec`: TorchRec ``EmbeddingBagConfig``s (one table per kept field at its
  searched width) and the trained rows of a run folder as an ``EmbeddingBagCollection`` state dict;
  the ``embdim export`` command.
"""
