"""Training for rnnserve's models: function-level APIs and the ``rnnserve train`` command.

- :mod:`.charlm` — char language models (seed 000's ``RNNModel``) on a text corpus;
- :mod:`.sentiment` — seed 001's ``SentimentRNN`` on positive/negative sentence files;
- :mod:`.common` — seeding, devices, threads, early stopping, progress bars;
- :mod:`.cli` — ``main(argv)``: ``train charlm ...`` / ``train sentiment ...``.
"""
