"""The ``lookahead`` router: a masked LM that predicts every model's answer quality (serving: ``router``, ``model``, ``inputs``; trainer: ``training``; its ablation table: ``evaluation``)."""
