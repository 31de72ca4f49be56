"""RL curation (``jobs/curate.py``): score rows -> filtered rows with group-normalised advantages,
top-k per group, and preference pairs, with a report that rebuilds byte for byte.

    expression.py  the reward's grammar (tokenizer + recursive descent -> SQL; never eval)
    rules.py       the rules as data: the filter order, bounds, pair modes, the tie rule
    source.py      the score files, their summary, a duckdb view over them (local or object storage)
    plan.py        the curation as duckdb SQL: filters, groups, ranks, advantages, pairs
    report.py      histograms, curation.json, what the job prints
    outputs.py     the output directory: staged, then published with curation.json last
    job.py         the job: check everything, run the plan, write the files
"""
