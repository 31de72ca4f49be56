"""The curation as a duckdb plan over the score view: filters, reward, groups, top-k, pairs, advantages.

Every step is SQL that duckdb runs out of core (spilling beyond ``--memory-limit`` to a temporary
folder), so no step holds the score table in Python: the driver sees counts and the few
rows of the report. The steps, in order (``rules`` has the filter order):

- ``stage``: each score row with its reward, its spread and the first filter that drops it;
  the survivors of filters 1-6 become the table ``pool``;
- ``bounds``: ``--min``/``--max``, quantile bounds from per-generator quantiles of ``pool``;
  the survivors become ``survivors``;
- ``ranked``: per group (``--group-by``) the rank (reward descending, then id ascending), size,
  mean and std of the reward, and the advantage;
- ``pairs``: candidate pairs by mode, then the margin, the uncertain members and the cap.

Floating-point sums are order-dependent, so every window that sums has a total order (reward,
then id) inside its group: the same rows give the same bits whatever the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

from qeval_ray.contracts.schema import ID, MEDIA_TYPE, PROMPT, STATUS, URI, Status
from qeval_ray.curate import expression, rules
from qeval_ray.curate.expression import quote
from qeval_ray.curate.rules import REWARD, RuleError, Threshold
from qeval_ray.curate.source import VIEW
from qeval_ray.options import did_you_mean
from qeval_ray.scorers.qeval import ASPECTS, MOS_LEVELS, probability_columns, spread_column

SPREAD = "spread"
OUTPUT_COLUMNS = (REWARD, SPREAD, "rank", "group_size", "group_mean", "group_std", "advantage")
_NUMERIC = ("DOUBLE", "FLOAT", "REAL", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT",
            "UINTEGER", "USMALLINT", "UTINYINT", "UHUGEINT", "DECIMAL")


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _number(value: float) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"


@dataclass(frozen=True)
class Rules:
    """The command line's rules (``CurateConfig`` has the same names)."""

    reward: str = rules.DEFAULT_REWARD
    media_type: tuple[str, ...] = ()
    generators: tuple[str, ...] = ()
    generator_column: str = "model"
    max_std: float | None = None
    min: tuple[Threshold, ...] = ()
    max: tuple[Threshold, ...] = ()
    group_by: tuple[str, ...] = (PROMPT,)
    top_k: int = 0
    pairs: str = "all"
    min_margin: float = 0.0
    max_pairs_per_group: int = 0
    pair_max_std: float | None = None
    advantage_std: str = "population"

    @classmethod
    def of(cls, config) -> "Rules":
        import dataclasses

        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self, reward: expression.Expression | None = None) -> dict:
        """The rules as curation.json records them."""
        return {
            "reward": self.reward, "reward_parsed": reward.text() if reward else None,
            "media_type": list(self.media_type) or None, "generators": list(self.generators) or None,
            "generator_column": self.generator_column, "max_std": self.max_std,
            "min": [t.text() for t in self.min], "max": [t.text() for t in self.max],
            "group_by": list(self.group_by), "rank_order": rules.TIE_RULE,
            "top_k": self.top_k or None, "pairs": self.pairs, "min_margin": self.min_margin,
            "max_pairs_per_group": self.max_pairs_per_group or None, "pair_max_std": self.pair_max_std,
            "advantage": f"(reward - group mean) / group {self.advantage_std} std; 0 in a group of one or of no "
                         f"spread (std <= {rules.ZERO_SPREAD:g} x (1 + |mean|))",
        }


class Plan:
    """The curation's SQL over the view ``scores`` in ``con``, checked against its columns first."""

    def __init__(self, con, rules_: Rules):
        self.con = con
        self.rules = rules_
        described = con.execute(f"DESCRIBE {VIEW}").fetchall()
        self.types = {name: kind.upper() for name, kind, *_ in described}
        self.derived: dict[str, str] = {}  # spread columns older score files lack, from their probabilities
        for aspect in ASPECTS:
            name, probabilities = spread_column(aspect), probability_columns(aspect)
            if name not in self.types and all(p in self.types for p in probabilities):
                self.derived[name] = _spread_sql(probabilities)
        self.numeric = sorted([n for n, t in self.types.items() if t.startswith(_NUMERIC)] + list(self.derived))
        self._check()

    # --- checks, before any work ------------------------------------------------------------------

    def _require(self, names, why: str) -> None:
        for name in names:
            if name not in self.types:
                raise RuleError(f"{why}: the scores have no column {name!r}{did_you_mean(name, sorted(self.types))}")

    def _check(self) -> None:
        r = self.rules
        self._require((ID, URI, STATUS), "curation")
        clash = [c for c in OUTPUT_COLUMNS if c in self.types]
        if clash:
            raise RuleError(f"the scores already have column(s) {', '.join(clash)}, which the curation adds: "
                            "rename them first")
        try:
            self.reward = expression.parse(r.reward, self.numeric, [c for c in self.types if c not in self.numeric])
        except expression.ExpressionError as e:
            raise RuleError(f"--reward: {e}") from None
        self._require(r.group_by, "--group-by")
        if r.pairs != "none":
            self._require((PROMPT,), "pairs carry the prompt")
        if r.media_type:
            self._require((MEDIA_TYPE,), "--media-type")
        if r.generators or any(t.quantile for t in r.min + r.max):
            self._require((r.generator_column,), "--generators and quantile bounds")
        for flag, bounds in (("--min", r.min), ("--max", r.max)):
            for t in bounds:
                if t.column != REWARD and t.column not in self.numeric:
                    known = self.numeric + [REWARD]
                    what = "is not a number" if t.column in self.types else "is not a column of the scores"
                    raise RuleError(f"{flag} {t.text()}: {t.column!r} {what}{did_you_mean(t.column, known)}")
        self.spread_columns = self._spread_columns()
        if (r.max_std is not None or r.pair_max_std is not None) and not self.spread_columns:
            raise RuleError("--max-std and --pair-max-std need quality_std/alignment_std (or the five "
                            "probabilities of an aspect) in the scores")

    def _spread_columns(self) -> list[str]:
        """The spread columns of the aspects the reward reads (every aspect's if it reads none)."""
        read = [a for a in ASPECTS if any(c == a or c.startswith(a + "_") for c in self.reward.columns)]
        columns = [spread_column(a) for a in (read or ASPECTS)]
        return [c for c in columns if c in self.types or c in self.derived]

    # --- stage 1: reward, spread, filters 1-6 -------------------------------------------------------

    def base_sql(self) -> str:
        """The score rows with the spread columns older files lack (the view ``base``)."""
        derived = "".join(f", {sql} AS {quote(name)}" for name, sql in self.derived.items())
        return f"SELECT *{derived} FROM {VIEW}"

    def narrow(self) -> list[str]:
        """The columns the plan carries from the filters on (kept rows get the rest back by id):
        sorting and joining a few columns, not every score column, is most of the plan's speed."""
        r = self.rules
        generator = [r.generator_column] if r.generator_column in self.types else []
        bounded = [t.column for t in r.min + r.max if t.column != REWARD]
        prompt = [PROMPT] if PROMPT in self.types else []
        return list(dict.fromkeys([ID, URI, *prompt, *generator, *r.group_by, *bounded, REWARD, SPREAD]))

    def needed(self) -> list[str]:
        """Columns a row must have a value in (rule 4, ``missing``)."""
        bounded = [t.column for t in self.rules.min + self.rules.max if t.column != REWARD]
        return list(dict.fromkeys([*self.reward.columns, *bounded, *self.rules.group_by]))

    def stage_sql(self) -> str:
        r = self.rules
        any_null = " OR ".join(f"{quote(c)} IS NULL" for c in self.reward.columns)
        reward = f"CASE WHEN {any_null} THEN NULL ELSE {self.reward.sql()} END" if any_null else self.reward.sql()
        spread = (f"greatest({', '.join(quote(c) for c in self.spread_columns)})" if len(self.spread_columns) > 1
                  else quote(self.spread_columns[0]) if self.spread_columns else "CAST(NULL AS DOUBLE)")
        reasons = [f"WHEN {quote(STATUS)} IS DISTINCT FROM {literal(Status.OK)} THEN "
                   f"'status:' || coalesce({quote(STATUS)}, 'null')"]
        if r.media_type:
            reasons.append(f"WHEN {quote(MEDIA_TYPE)} IS NULL OR {quote(MEDIA_TYPE)} NOT IN "
                           f"({', '.join(map(literal, r.media_type))}) THEN 'media_type'")
        if r.generators:
            g = quote(r.generator_column)
            reasons.append(f"WHEN {g} IS NULL OR CAST({g} AS VARCHAR) NOT IN "
                           f"({', '.join(map(literal, r.generators))}) THEN 'generator'")
        reasons.append(f"WHEN {' OR '.join(f'{quote(c)} IS NULL' for c in self.needed())} THEN 'missing'")
        reasons.append(f"WHEN NOT isfinite({quote(REWARD)}) THEN 'reward'")
        if r.max_std is not None:
            reasons.append(f"WHEN {quote(SPREAD)} > {_number(r.max_std)} THEN 'max_std'")
        return (f"SELECT *, CASE {' '.join(reasons)} END AS _reason FROM "
                f"(SELECT *, {reward} AS {quote(REWARD)}, {spread} AS {quote(SPREAD)} FROM base)")

    # --- stage 2: bounds -------------------------------------------------------------------------------

    def bounds(self) -> list[tuple[str, Threshold]]:
        return [("min", t) for t in self.rules.min] + [("max", t) for t in self.rules.max]

    def cuts_sql(self) -> str | None:
        """Per-generator quantiles of ``pool``, one column per quantile bound."""
        quantiles = [(k, t) for k, (_, t) in enumerate(self.bounds()) if t.quantile]
        if not quantiles:
            return None
        g = quote(self.rules.generator_column)
        columns = ", ".join(f"quantile_cont({quote(t.column)}, {_number(t.value)}) AS _cut{k}" for k, t in quantiles)
        return f"SELECT {g} AS _generator, {columns} FROM pool GROUP BY {g}"

    def bounded_sql(self) -> str:
        """``pool`` rows with the first bound that drops each (``_reason``)."""
        reasons = []
        for k, (side, t) in enumerate(self.bounds()):
            limit = f"_cuts._cut{k}" if t.quantile else _number(t.value)
            test = f"{quote(t.column)} >= {limit}" if side == "min" else f"{quote(t.column)} <= {limit}"
            reasons.append(f"WHEN NOT coalesce({test}, false) THEN {literal(f'{side} {t.text()}')}")
        reason = f"CASE {' '.join(reasons)} END" if reasons else "CAST(NULL AS VARCHAR)"
        join = ""
        if self.cuts_sql():
            join = f" LEFT JOIN _cuts ON pool.{quote(self.rules.generator_column)} IS NOT DISTINCT FROM _cuts._generator"
        return f"SELECT pool.*, {reason} AS _reason FROM pool{join}"

    # --- stage 3: groups --------------------------------------------------------------------------------

    @property
    def group(self) -> str:
        return ", ".join(quote(c) for c in self.rules.group_by)

    def ranked_sql(self) -> str:
        std = "stddev_pop" if self.rules.advantage_std == "population" else "stddev_samp"
        order = f"{quote(REWARD)} DESC, {quote(ID)} ASC"
        window = f"PARTITION BY {self.group} ORDER BY {order} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING"
        stats = (f"SELECT *, row_number() OVER (PARTITION BY {self.group} ORDER BY {order}) AS rank, "
                 f"count(*) OVER w AS group_size, avg({quote(REWARD)}) OVER w AS group_mean, "
                 f"{std}({quote(REWARD)}) OVER w AS group_std FROM survivors WINDOW w AS ({window})")
        flat = f"group_std IS NULL OR group_std <= {rules.ZERO_SPREAD!r} * (1 + abs(group_mean))"
        return (f"SELECT *, CASE WHEN group_size = 1 OR {flat} THEN CAST(0 AS DOUBLE) "
                f"ELSE ({quote(REWARD)} - group_mean) / group_std END AS advantage FROM ({stats})")

    def kept_sql(self) -> str:
        """kept.parquet's rows: every score column back (joined on id), then the plan's columns, in
        group order and rank within."""
        keep = f"r.rank <= {int(self.rules.top_k)}" if self.rules.top_k else "true"
        added = ", ".join(f"r.{quote(c)}" for c in OUTPUT_COLUMNS)
        group = ", ".join(f"r.{quote(c)}" for c in self.rules.group_by)
        return (f"SELECT b.*, {added} FROM base b JOIN ranked r ON b.{quote(ID)} = r.{quote(ID)} "
                f"WHERE {keep} ORDER BY {group}, r.rank")

    def zero_spread_sql(self) -> str:
        return f"group_size > 1 AND (group_std IS NULL OR group_std <= {rules.ZERO_SPREAD!r} * (1 + abs(group_mean)))"

    # --- stage 4: pairs ------------------------------------------------------------------------------------

    def pair_columns(self) -> list[str]:
        """pairs.parquet's columns, in order: TRL's three, the rewards and margin, then who is who."""
        extra = [c for c in self.rules.group_by if c != PROMPT]
        generator = [f"chosen_{self.rules.generator_column}", f"rejected_{self.rules.generator_column}"] \
            if self.rules.generator_column in self.types else []
        return [PROMPT, "chosen", "rejected", "chosen_reward", "rejected_reward", "margin",
                *extra, "chosen_id", "rejected_id", "chosen_rank", "rejected_rank", *generator]

    def candidates_sql(self) -> str:
        """Every pair the mode makes, with the first pair rule that leaves it out (``_reason``)."""
        r = self.rules
        on = " AND ".join(f"a.{quote(c)} = b.{quote(c)}" for c in r.group_by)
        mode = {"all": "b.rank > a.rank", "adjacent": "b.rank = a.rank + 1",
                "best-vs-worst": "a.rank = 1 AND b.rank = b.group_size AND b.group_size > 1"}[r.pairs]
        extra = "".join(f", a.{quote(c)} AS {quote(c)}" for c in r.group_by if c != PROMPT)
        g = r.generator_column
        generator = (f", a.{quote(g)} AS {quote('chosen_' + g)}, b.{quote(g)} AS {quote('rejected_' + g)}"
                     if g in self.types else "")
        margin = f"a.{quote(REWARD)} - b.{quote(REWARD)}"
        reasons = [f"WHEN NOT ({margin} > 0) THEN 'equal_rewards'"]
        if r.min_margin > 0:
            reasons.append(f"WHEN {margin} < {_number(r.min_margin)} THEN 'min_margin'")
        if r.pair_max_std is not None:
            reasons.append(f"WHEN greatest(a.{SPREAD}, b.{SPREAD}) > {_number(r.pair_max_std)} THEN 'uncertain'")
        return (f"SELECT a.{quote(PROMPT)} AS prompt, a.{quote(URI)} AS chosen, b.{quote(URI)} AS rejected, "
                f"a.{quote(REWARD)} AS chosen_reward, b.{quote(REWARD)} AS rejected_reward, {margin} AS margin"
                f"{extra}, a.{quote(ID)} AS chosen_id, b.{quote(ID)} AS rejected_id, a.rank AS chosen_rank, "
                f"b.rank AS rejected_rank{generator}, CASE {' '.join(reasons)} END AS _reason, "
                + ", ".join(f"a.{quote(c)} AS {quote('_g_' + c)}" for c in r.group_by)
                + f" FROM ranked a JOIN ranked b ON {on} AND {mode}")

    def capped_sql(self) -> str:
        """Pairs that passed the pair rules, numbered within their group by margin (largest first;
        ties by the chosen's then the rejected's rank) for the cap."""
        group = ", ".join(quote("_g_" + c) for c in self.rules.group_by)
        return (f"SELECT *, row_number() OVER (PARTITION BY {group} ORDER BY margin DESC, chosen_rank, "
                f"rejected_rank) AS _n FROM pair_candidates WHERE _reason IS NULL")

    def pairs_order(self) -> str:
        return ", ".join(quote("_g_" + c) for c in self.rules.group_by) + ", chosen_rank, rejected_rank"


def _spread_sql(probabilities: list[str]) -> str:
    """The spread of a five-level distribution on the 1-5 scale, in SQL (scorers.qeval's formula)."""
    total = " + ".join(f"CAST({quote(p)} AS DOUBLE)" for p in probabilities)
    mean = " + ".join(f"CAST({quote(p)} AS DOUBLE) * {level!r}" for p, level in zip(probabilities, MOS_LEVELS))
    mean = f"(({mean}) / ({total}))"
    variance = " + ".join(f"CAST({quote(p)} AS DOUBLE) * pow({level!r} - {mean}, 2)"
                          for p, level in zip(probabilities, MOS_LEVELS))
    return f"sqrt(greatest(({variance}) / ({total}), 0))"
