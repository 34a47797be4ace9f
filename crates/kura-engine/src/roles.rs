//! The analysis rules of ad-hoc queries, checked on the logical plan.
//!
//! Every column of every operator gets a label that says what its values may reveal:
//!
//! | label | from | may appear |
//! | --- | --- | --- |
//! | identifier | an `identifier` column, unchanged | in equi-join conditions, in `COUNT` / `COUNT(DISTINCT ...)` |
//! | measure | a `measure` column, or any computation involving one | inside an allowed aggregate |
//! | dimension | `dimension` columns, constants and functions of them | anywhere |
//! | statistic | the result of an allowed aggregate | anywhere above its aggregation |
//!
//! The output may hold only dimensions (the group keys), statistics and constants. A
//! construct the rule does not know is refused: window functions, subquery expressions,
//! set operations (other than UNION ALL, left to the threshold rule), LIMIT before an
//! aggregation, and every plan node or expression not listed below. The rule runs twice: on the
//! plan as written, for precise reasons, and as a DataFusion analyzer rule on the plan that
//! executes (after the threshold rewrite), where failure is fatal and nothing can skip it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{DFSchema, JoinType, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Cast, TryCast};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;
use kura_contract::{Adhoc, ColumnRole, Contract};

use crate::EngineError;
use crate::threshold::HIDDEN_PREFIX;

/// What a value may reveal, least sensitive first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Constant,
    Dimension,
    Statistic,
    Measure,
    Identifier,
}

#[derive(Clone, Debug)]
struct Label {
    kind: Kind,
    /// The contract column it comes from (`dataset.column`), for rules and messages.
    column: Option<String>,
    /// An unchanged copy of that column (not a computation on it).
    bare: bool,
    /// The dimensions with a function list (`dimension_functions`) that this value is computed
    /// from, however deep: every function it passes through must be on each one's list.
    narrowed: BTreeSet<String>,
}

impl Label {
    fn of(kind: Kind) -> Self {
        Self {
            kind,
            column: None,
            bare: false,
            narrowed: BTreeSet::new(),
        }
    }

    fn name(&self) -> String {
        self.column.clone().unwrap_or_else(|| "a value".into())
    }
}

/// The rules of one contract's `[adhoc]` section.
#[derive(Debug)]
pub struct Rules {
    roles: BTreeMap<(String, String), ColumnRole>,
    adhoc: Adhoc,
}

fn refuse(rule: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::Refused {
        rule,
        reason: reason.into(),
    }
}

impl Rules {
    /// The rules, or a refusal when the contract allows no ad-hoc queries.
    pub fn of(contract: &Contract) -> Result<Self, EngineError> {
        let adhoc = contract.adhoc.clone().ok_or_else(|| {
            refuse(
                "adhoc",
                "the contract has no [adhoc] section: only its named analyses may run",
            )
        })?;
        let roles = contract
            .datasets
            .iter()
            .flat_map(|d| {
                d.columns
                    .iter()
                    .map(|c| ((d.name.clone(), c.name.clone()), c.role))
            })
            .collect();
        Ok(Self { roles, adhoc })
    }

    /// The same rules for a contract's fixed analyses, which the parties sign as written: the
    /// column roles with every aggregate the ad-hoc rules know, so that a fixed analysis is
    /// held to the shape an ad-hoc query must have ([`crate::analysis_warnings`]).
    pub fn for_signing(contract: &Contract) -> Self {
        let adhoc = Adhoc {
            analysts: Vec::new(),
            receivers: Vec::new(),
            aggregates: kura_contract::ADHOC_AGGREGATES
                .iter()
                .map(|a| a.to_string())
                .collect(),
            column_aggregates: Default::default(),
            dimension_functions: Default::default(),
            require_dp: false,
            overlap_control: false,
            overlap_memory: None,
        };
        let mut with = contract.clone();
        with.adhoc = Some(adhoc);
        Self::of(&with).expect("an [adhoc] section is set")
    }

    /// Checks every node and expression of `plan` as [`Rules::check`] does, but not its
    /// output: for the rows a model is trained on or a scoring model reads, which leave the
    /// enclave only as a model or as each row's own score. Measures still reach their consumer
    /// unchanged, identifiers are still only joined (`ON id IN (...)` builds a feature of a
    /// few chosen people), and row-level functions come from the allow-list.
    pub fn check_flow(&self, plan: &LogicalPlan) -> Result<(), EngineError> {
        self.labels(&explicit_joins(plan), false)?;
        read_once(plan)
    }

    /// Checks `plan`; the output may hold only dimensions, statistics and constants.
    pub fn check(&self, plan: &LogicalPlan) -> Result<(), EngineError> {
        let labels = self.labels(&explicit_joins(plan), false)?;
        if labels.len() != plan.schema().fields().len() {
            return Err(refuse(
                "unsupported-construct",
                "the rule could not label every output column, so the query is refused",
            ));
        }
        for (label, field) in labels.iter().zip(plan.schema().fields()) {
            match label.kind {
                Kind::Identifier => {
                    return Err(refuse(
                        "identifier-use",
                        format!(
                            "output column {:?} carries the identifier {}: identifiers never leave the enclave",
                            field.name(),
                            label.name()
                        ),
                    ));
                }
                Kind::Measure => {
                    return Err(refuse(
                        "measure-use",
                        format!(
                            "output column {:?} carries row-level values of the measure {}: measures leave only inside an aggregate",
                            field.name(),
                            label.name()
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn labels(&self, plan: &LogicalPlan, under_aggregate: bool) -> Result<Vec<Label>, EngineError> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table().to_string();
                let labels: Vec<Label> = scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let role = self.roles.get(&(table.clone(), f.name().clone()));
                        let kind = match role {
                            Some(ColumnRole::Identifier) => Kind::Identifier,
                            Some(ColumnRole::Measure) => Kind::Measure,
                            Some(ColumnRole::Dimension) => Kind::Dimension,
                            // Not a contract column: treat as the most sensitive.
                            None => Kind::Identifier,
                        };
                        let column = format!("{table}.{}", f.name());
                        let narrowed = if kind == Kind::Dimension
                            && self.adhoc.dimension_functions.contains_key(&column)
                        {
                            BTreeSet::from([column.clone()])
                        } else {
                            BTreeSet::new()
                        };
                        Label {
                            kind,
                            column: Some(column),
                            bare: true,
                            narrowed,
                        }
                    })
                    .collect();
                for f in &scan.filters {
                    self.check_predicate(f, &labels, &scan.projected_schema)?;
                }
                Ok(labels)
            }
            LogicalPlan::Projection(p) => {
                let input = self.labels(&p.input, under_aggregate)?;
                p.expr
                    .iter()
                    .map(|e| self.label(e, &input, p.input.schema()))
                    .collect()
            }
            LogicalPlan::Filter(f) => {
                let cross = match f.input.as_ref() {
                    LogicalPlan::Join(j) if j.on.is_empty() => Some(j),
                    _ => None,
                };
                let input = match cross {
                    Some(j) => self.join_labels(j, under_aggregate, false)?,
                    None => self.labels(&f.input, under_aggregate)?,
                };
                self.check_predicate(&f.predicate, &input, f.input.schema())?;
                if cross.is_some() {
                    return Err(join_refused());
                }
                Ok(input)
            }
            LogicalPlan::SubqueryAlias(a) => self.labels(&a.input, under_aggregate),
            LogicalPlan::Repartition(r) => match &r.partitioning_scheme {
                // `DISTRIBUTE BY` partitions by expressions the labeller would not see.
                datafusion::logical_expr::Partitioning::DistributeBy(_) => {
                    Err(refuse("unsupported-construct", "DISTRIBUTE BY is refused"))
                }
                _ => self.labels(&r.input, under_aggregate),
            },
            LogicalPlan::Sort(s) => {
                let input = self.labels(&s.input, under_aggregate)?;
                for key in &s.expr {
                    let label = self.label(&key.expr, &input, s.input.schema())?;
                    self.comparable(&label, "ORDER BY")?;
                }
                if s.fetch.is_some() && under_aggregate {
                    return Err(limit_before_aggregation());
                }
                Ok(input)
            }
            LogicalPlan::Limit(l) => {
                if under_aggregate {
                    return Err(limit_before_aggregation());
                }
                self.labels(&l.input, under_aggregate)
            }
            LogicalPlan::Aggregate(a) => {
                if under_aggregate {
                    return Err(refuse(
                        "unsupported-construct",
                        "an aggregation inside the input of another aggregation (a derived \
                         table, CTE or join side that aggregates): its groups would reach the \
                         outer query without the threshold, so one person's sum could travel as \
                         a value; ask for each aggregation in a query of its own",
                    ));
                }
                let input = self.labels(&a.input, true)?;
                read_once(&a.input)?;
                let schema = a.input.schema();
                let mut out = Vec::new();
                for g in &a.group_expr {
                    let exprs: Vec<&Expr> = match g {
                        Expr::GroupingSet(set) => set.distinct_expr(),
                        other => vec![other],
                    };
                    for e in &exprs {
                        let label = self.label(e, &input, schema)?;
                        match label.kind {
                            Kind::Identifier => {
                                return Err(refuse(
                                    "identifier-use",
                                    format!(
                                        "GROUP BY the identifier {}: one group per person is row-level data",
                                        label.name()
                                    ),
                                ));
                            }
                            Kind::Measure => {
                                return Err(refuse(
                                    "measure-use",
                                    format!(
                                        "GROUP BY the measure {}: its values would leave as group keys",
                                        label.name()
                                    ),
                                ));
                            }
                            Kind::Statistic => {
                                return Err(refuse(
                                    "unsupported-construct",
                                    "GROUP BY the result of another aggregation (nested aggregation)",
                                ));
                            }
                            _ => out.push(label),
                        }
                    }
                }
                // ROLLUP, CUBE and GROUPING SETS release totals beside their parts: total
                // minus the released parts is the suppressed part.
                if a.group_expr
                    .iter()
                    .any(|g| matches!(g, Expr::GroupingSet(_)))
                {
                    return Err(refuse(
                        "grouping-sets",
                        "ROLLUP, CUBE and GROUPING SETS release totals beside their parts, and \
                         a total minus the released parts is the suppressed part: ask for each \
                         grouping in a query of its own",
                    ));
                }
                for e in &a.aggr_expr {
                    self.check_aggregate(e, &input, schema)?;
                    // A statistic of a narrowed dimension is still computed from it: a
                    // function above the aggregation is held to the dimension's list too.
                    let mut statistic = Label::of(Kind::Statistic);
                    let mut inner = e;
                    while let Expr::Alias(a) = inner {
                        inner = a.expr.as_ref();
                    }
                    if let Expr::AggregateFunction(f) = inner {
                        for arg in &f.params.args {
                            if let Ok(l) = self.label(arg, &input, schema) {
                                statistic.narrowed.extend(l.narrowed);
                            }
                        }
                    }
                    out.push(statistic);
                }
                Ok(out)
            }
            LogicalPlan::Join(j) => self.join_labels(j, under_aggregate, true),
            LogicalPlan::Union(u) => {
                let mut out: Option<Vec<Label>> = None;
                for input in &u.inputs {
                    let labels = self.labels(input, under_aggregate)?;
                    out = Some(match out {
                        None => labels,
                        Some(prev) => prev.into_iter().zip(labels).map(merge).collect(),
                    });
                }
                Ok(out.unwrap_or_default())
            }
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => {
                self.labels(input, under_aggregate)
            }
            LogicalPlan::Values(v) => Ok(vec![Label::of(Kind::Constant); v.schema.fields().len()]),
            LogicalPlan::EmptyRelation(e) => {
                Ok(vec![Label::of(Kind::Constant); e.schema.fields().len()])
            }
            LogicalPlan::Window(_) => Err(refuse(
                "unsupported-construct",
                "window functions (OVER ...) are refused: they attach group values to single rows",
            )),
            other => Err(refuse(
                "unsupported-construct",
                format!(
                    "the rule does not know the plan operator {:?}, so it is refused",
                    other.display().to_string().split(':').next().unwrap_or("?")
                ),
            )),
        }
    }

    /// The labels of a join's output. Its keys must be equal identifiers (`require_keys`; a
    /// filter above a cross join is checked first, for a precise reason, and then this refuses).
    fn join_labels(
        &self,
        j: &datafusion::logical_expr::Join,
        under_aggregate: bool,
        require_keys: bool,
    ) -> Result<Vec<Label>, EngineError> {
        if matches!(j.join_type, JoinType::LeftMark | JoinType::RightMark) {
            return Err(subquery_refused());
        }
        let left = self.labels(&j.left, under_aggregate)?;
        let right = self.labels(&j.right, under_aggregate)?;
        for (l, r) in &j.on {
            let l = self.label(l, &left, j.left.schema())?;
            let r = self.label(r, &right, j.right.schema())?;
            self.check_equi(&l, &r)?;
            if !(l.kind == Kind::Identifier && r.kind == Kind::Identifier) {
                return Err(join_refused());
            }
        }
        let mut all = left.clone();
        all.extend(right.iter().cloned());
        if let Some(filter) = &j.filter {
            let schema = j.left.schema().join(j.right.schema())?;
            self.check_predicate(filter, &all, &schema)?;
        }
        if require_keys && j.on.is_empty() {
            return Err(join_refused());
        }
        Ok(match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => left,
            JoinType::RightSemi | JoinType::RightAnti => right,
            _ => all,
        })
    }

    /// The label of `expr` over an input with `input` labels.
    fn label(&self, expr: &Expr, input: &[Label], schema: &DFSchema) -> Result<Label, EngineError> {
        let combine = |children: &[&Expr], what: &str| -> Result<Label, EngineError> {
            let mut out = Label::of(Kind::Constant);
            for child in children {
                let l = self.label(child, input, schema)?;
                if l.kind == Kind::Identifier {
                    return Err(refuse(
                        "identifier-use",
                        format!(
                            "the identifier {} is used in {what}: identifiers may only be \
                             compared in equi-join conditions and counted",
                            l.name()
                        ),
                    ));
                }
                if l.kind == Kind::Measure {
                    return Err(measure_computed(&l, what));
                }
                out.narrowed.extend(l.narrowed.iter().cloned());
                if l.kind > out.kind {
                    out = Label {
                        kind: l.kind,
                        column: l.column,
                        bare: false,
                        narrowed: std::mem::take(&mut out.narrowed),
                    };
                }
            }
            Ok(out)
        };
        match expr {
            Expr::Column(c) => {
                let i = schema.index_of_column(c)?;
                Ok(input[i].clone())
            }
            Expr::Alias(a) => {
                // The threshold rule pads UNION ALL branches with a count that never suppresses.
                if a.name.starts_with(HIDDEN_PREFIX)
                    && matches!(
                        a.expr.as_ref(),
                        Expr::Literal(ScalarValue::Int64(Some(i64::MAX)), _)
                    )
                {
                    return Ok(Label::of(Kind::Constant));
                }
                if a.name.starts_with(HIDDEN_PREFIX) {
                    return Err(refuse(
                        "unsupported-construct",
                        format!("names starting with {HIDDEN_PREFIX} are reserved"),
                    ));
                }
                self.label(&a.expr, input, schema)
            }
            Expr::Literal(..) => Ok(Label::of(Kind::Constant)),
            Expr::BinaryExpr(BinaryExpr {
                op:
                    Operator::RegexMatch
                    | Operator::RegexIMatch
                    | Operator::RegexNotMatch
                    | Operator::RegexNotIMatch,
                ..
            }) => Err(regex_refused(expr)),
            Expr::BinaryExpr(b) => {
                let out = combine(&[&b.left, &b.right], &format!("the expression {expr}"))?;
                total_arithmetic(b, schema)?;
                Ok(out)
            }
            Expr::Not(e)
            | Expr::IsNotNull(e)
            | Expr::IsNull(e)
            | Expr::IsTrue(e)
            | Expr::IsFalse(e)
            | Expr::IsUnknown(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNotFalse(e)
            | Expr::IsNotUnknown(e)
            | Expr::Negative(e) => combine(&[e], &format!("the expression {expr}")),
            Expr::Like(l) => combine(&[&l.expr, &l.pattern], &format!("the pattern match {expr}")),
            // A regular expression fails to compile, or past its size limit, on the rows that
            // reach it: whether any row does is the answer.
            Expr::SimilarTo(_) => Err(regex_refused(expr)),
            Expr::Between(b) => combine(&[&b.expr, &b.low, &b.high], &format!("{expr}")),
            Expr::Cast(Cast { expr: inner, field })
            | Expr::TryCast(TryCast { expr: inner, field }) => {
                let l = self.label(inner, input, schema)?;
                if l.kind != Kind::Measure {
                    let lossless_dimension = l.kind == Kind::Dimension
                        && lossless(&inner.get_type(schema)?, field.data_type());
                    return if lossless_dimension {
                        Ok(l)
                    } else {
                        combine(&[inner], "a CAST")
                    };
                }
                // A measure passes a cast only where the cast keeps every value apart and
                // cannot fail on one: it still reaches its aggregate as the person's own value.
                let from = inner.get_type(schema)?;
                if lossless(&from, field.data_type()) {
                    Ok(l)
                } else {
                    Err(measure_computed(
                        &l,
                        &format!("a cast from {from} to {}", field.data_type()),
                    ))
                }
            }
            Expr::InList(l) => {
                let mut all: Vec<&Expr> = vec![&l.expr];
                all.extend(l.list.iter());
                combine(&all, "an IN list")
            }
            Expr::Case(c) => {
                let mut all: Vec<&Expr> = Vec::new();
                all.extend(c.expr.as_deref());
                for (w, t) in &c.when_then_expr {
                    all.push(w);
                    all.push(t);
                }
                all.extend(c.else_expr.as_deref());
                combine(&all, "a CASE expression")
            }
            Expr::ScalarFunction(f) => {
                let name = f.func.name().to_ascii_lowercase();
                let args: Vec<&Expr> = f.args.iter().collect();
                // Identifiers and measures first: they may not reach a function at all.
                let out = combine(&args, &format!("the function {name}"))?;
                let labels = f
                    .args
                    .iter()
                    .map(|arg| self.label(arg, input, schema))
                    .collect::<Result<Vec<_>, _>>()?;
                // A dimension the contract narrows reaches only its listed functions, however
                // it got here: through a CASE, a cast, an operator, a concatenation or a
                // derived table, as well as bare.
                for column in labels.iter().flat_map(|l| l.narrowed.iter()) {
                    let allowed = &self.adhoc.dimension_functions[column];
                    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
                        return Err(refuse(
                            "dimension-functions",
                            format!(
                                "function {name} on a value computed from the dimension \
                                 {column} is not among those the contract allows for it ({})",
                                allowed.join(", ")
                            ),
                        ));
                    }
                }
                // A function that can fail on a value would answer a question about that value
                // with its failure: on rows below the aggregations, and (though only released
                // numbers reach it there) above them too, so that nothing fails on a value.
                total_function(&name, &f.args)?;
                for arg in &f.args {
                    total_argument(&name, arg, schema)?;
                }
                Ok(out)
            }
            Expr::AggregateFunction(_) => Err(refuse(
                "unsupported-construct",
                format!("aggregate {expr} outside an aggregation"),
            )),
            Expr::WindowFunction(_) => Err(refuse(
                "unsupported-construct",
                "window functions (OVER ...) are refused: they attach group values to single rows",
            )),
            Expr::ScalarSubquery(_)
            | Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..) => Err(subquery_refused()),
            Expr::Placeholder(_) | Expr::ScalarVariable(..) => Err(refuse(
                "unsupported-construct",
                format!("parameters and variables ({expr}) are refused"),
            )),
            other => Err(refuse(
                "unsupported-construct",
                format!("the rule does not know the expression {other}, so it is refused"),
            )),
        }
    }

    /// WHERE, HAVING and join filters: equalities between identifiers are join conditions;
    /// anything else may look only at dimensions, constants and statistics.
    fn check_predicate(
        &self,
        predicate: &Expr,
        input: &[Label],
        schema: &DFSchema,
    ) -> Result<(), EngineError> {
        for conjunct in datafusion::logical_expr::utils::split_conjunction(predicate) {
            if let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = conjunct
            {
                let l = self.label(left, input, schema);
                let r = self.label(right, input, schema);
                if let (Ok(l), Ok(r)) = (&l, &r)
                    && (l.kind == Kind::Identifier || r.kind == Kind::Identifier)
                {
                    self.check_equi(l, r)?;
                    continue;
                }
            }
            let label = self.label(conjunct, input, schema)?;
            self.comparable(&label, "a filter (WHERE, HAVING or ON)")?;
        }
        Ok(())
    }

    /// Both sides of an equi-join on identifiers must be identifiers, unchanged.
    fn check_equi(&self, l: &Label, r: &Label) -> Result<(), EngineError> {
        match (l.kind, r.kind) {
            (Kind::Identifier, Kind::Identifier) if l.bare && r.bare => Ok(()),
            (Kind::Identifier, _) | (_, Kind::Identifier) => Err(refuse(
                "identifier-use",
                format!(
                    "the identifier {} is compared with {}: an identifier may only be joined to \
                     another dataset's identifier, unchanged",
                    if l.kind == Kind::Identifier {
                        l.name()
                    } else {
                        r.name()
                    },
                    if l.kind == Kind::Identifier {
                        r.name()
                    } else {
                        l.name()
                    },
                ),
            )),
            _ => {
                self.comparable(l, "a join condition")?;
                self.comparable(r, "a join condition")
            }
        }
    }

    /// A value that selects or orders rows: not an identifier, not a measure.
    fn comparable(&self, label: &Label, place: &str) -> Result<(), EngineError> {
        match label.kind {
            Kind::Identifier => Err(refuse(
                "identifier-use",
                format!(
                    "the identifier {} is used in {place}: identifiers may only be compared in \
                     equi-join conditions and counted",
                    label.name()
                ),
            )),
            Kind::Measure => Err(refuse(
                "measure-use",
                format!(
                    "the measure {} is used in {place}: measures may only be aggregated \
                     (filtering on them singles out individuals)",
                    label.name()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_aggregate(
        &self,
        expr: &Expr,
        input: &[Label],
        schema: &DFSchema,
    ) -> Result<(), EngineError> {
        let (hidden, expr) = match expr {
            Expr::Alias(a) => (a.name.starts_with(HIDDEN_PREFIX), a.expr.as_ref()),
            other => (false, other),
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
            return Err(refuse(
                "unsupported-construct",
                format!("the rule does not know the aggregate expression {expr}"),
            ));
        };
        // The threshold rule's own counts of distinct privacy units, whatever the contract lists.
        if hidden {
            // `kura_units(unit)`, or `kura_units_set(unit, value)` whose value (a column or a
            // constant) is only hashed into a fingerprint that never leaves the enclave.
            let unit = match (func.name(), params.args.as_slice()) {
                (crate::units::NAME | crate::rows::NAME, [unit]) => {
                    Some(self.label(unit, input, schema)?)
                }
                (crate::overlap::NAME, [unit, Expr::Column(_) | Expr::Literal(..)]) => {
                    Some(self.label(unit, input, schema)?)
                }
                _ => None,
            };
            // Its FILTER (contributors of one aggregate) is the threshold rule's own too.
            return if !params.distinct && unit.is_some_and(|l| l.kind == Kind::Identifier && l.bare)
            {
                Ok(())
            } else {
                Err(refuse(
                    "unsupported-construct",
                    format!("names starting with {HIDDEN_PREFIX} are reserved"),
                ))
            };
        }
        let name = func.name().to_ascii_lowercase();
        let kind = match (name.as_str(), params.distinct) {
            ("count", true) => "count_distinct",
            ("count", false) => "count",
            ("sum", false) => "sum",
            ("avg" | "mean", false) => "avg",
            ("min", _) => "min",
            ("max", _) => "max",
            ("stddev" | "stddev_samp", false) => "stddev",
            ("var" | "var_samp" | "variance", false) => "variance",
            ("median", false) => "median",
            (_, true) => {
                return Err(refuse(
                    "aggregate-functions",
                    format!("{name}(DISTINCT ...) is refused; only COUNT(DISTINCT ...) is allowed"),
                ));
            }
            _ => {
                return Err(refuse(
                    "aggregate-functions",
                    format!(
                        "aggregate {name} is refused: it is not one kura can prove safe (it may \
                         return raw values of a group)"
                    ),
                ));
            }
        };
        if !params.order_by.is_empty() {
            return Err(refuse(
                "aggregate-functions",
                format!("ORDER BY inside the aggregate {name} is refused"),
            ));
        }
        let mut labels = Vec::new();
        for arg in &params.args {
            // A measure computed on inside the aggregate is refused by the measure rule; the
            // aggregate's own rule says more precisely what to write instead.
            let label = self.label(arg, input, schema).map_err(|e| {
                match (&e, plain_argument(arg, schema)) {
                    (
                        EngineError::Refused {
                            rule: "measure-use",
                            ..
                        },
                        Err(why),
                    ) => aggregate_argument(kind, arg, &why),
                    _ => e,
                }
            })?;
            labels.push(label);
        }
        if let Some(filter) = &params.filter {
            // A filter on a measure falls to the FILTER rule below, which says what to write.
            let l = match self.label(filter, input, schema) {
                Err(EngineError::Refused {
                    rule: "measure-use",
                    ..
                }) => Label::of(Kind::Measure),
                other => other?,
            };
            if l.kind == Kind::Identifier {
                return Err(refuse(
                    "identifier-use",
                    format!("the identifier {} is used in an aggregate FILTER", l.name()),
                ));
            }
        }
        if !self.adhoc.aggregates.iter().any(|a| a == kind) {
            return Err(refuse(
                "aggregate-functions",
                format!(
                    "aggregate {kind} is not allowed by the contract (allowed: {})",
                    self.adhoc.aggregates.join(", ")
                ),
            ));
        }
        for l in &labels {
            if l.kind == Kind::Identifier && !(matches!(kind, "count" | "count_distinct") && l.bare)
            {
                return Err(refuse(
                    "identifier-use",
                    format!(
                        "{kind} of the identifier {}: identifiers may only be counted",
                        l.name()
                    ),
                ));
            }
            if l.bare
                && let Some(column) = &l.column
                && let Some(allowed) = self.adhoc.column_aggregates.get(column)
                && !allowed.iter().any(|a| a == kind)
            {
                return Err(refuse(
                    "aggregate-functions",
                    format!(
                        "aggregate {kind} of {column} is not allowed by the contract (allowed for it: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if kura_contract::ONE_PERSON_AGGREGATES.contains(&kind) {
            return Err(refuse(
                "one-person-value",
                format!(
                    "{kind} returns the value of one member of the group, whatever its size: \
                     it is refused even where the contract lists it"
                ),
            ));
        }
        if params.filter.is_some() {
            return Err(refuse(
                "aggregate-filter",
                "FILTER (WHERE ...) picks rows inside a group, and several filtered aggregates \
                 can be subtracted to isolate a suppressed part: group by the condition \
                 (GROUP BY ...) or filter the whole query (WHERE ...) instead",
            ));
        }
        for (arg, label) in params.args.iter().zip(&labels) {
            if let Err(why) = plain_argument(arg, schema) {
                return Err(aggregate_argument(kind, arg, &why));
            }
            // A column of a derived table, CTE or union is plain only if it is a dataset's
            // column passed through unchanged: `CASE WHEN region = 'x' THEN 100 ELSE 0 END AS v`
            // one level down is the conditional count it would be inside the aggregate.
            if !(label.bare || label.kind == Kind::Constant) {
                return Err(aggregate_argument(
                    kind,
                    arg,
                    "it is computed below the aggregate (in a derived table, CTE or union), not a \
                     dataset's column passed through unchanged",
                ));
            }
        }
        Ok(())
    }
}

fn aggregate_argument(kind: &str, arg: &Expr, why: &str) -> EngineError {
    refuse(
        "aggregate-argument",
        format!(
            "{kind}({arg}): {why}. An aggregate takes a column, or a lossless cast of one, so \
             that every row of the group contributes its own value; do arithmetic on the \
             aggregate instead (2 * AVG(x) + 1, not AVG(2 * x + 1)) and conditions in GROUP BY \
             or WHERE"
        ),
    )
}

/// An aggregate's argument as the whitelist has it: a constant, a column, or a lossless cast
/// of one. Anything else (`CASE`, `NULLIF`, `COALESCE`, arithmetic, functions, lossy casts) can
/// make every row but a chosen few contribute nothing, so that the value is theirs alone while
/// the group counts many people.
fn plain_argument(expr: &Expr, schema: &DFSchema) -> Result<(), String> {
    match expr {
        Expr::Literal(..) | Expr::Column(_) => Ok(()),
        Expr::Alias(a) => plain_argument(&a.expr, schema),
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
            let data_type = field.data_type();
            let from = expr
                .get_type(schema)
                .map_err(|_| "the type of the cast's input is unknown".to_string())?;
            if lossless(&from, data_type) {
                plain_argument(expr, schema)
            } else {
                Err(format!(
                    "a cast from {from} to {data_type} can map different values to one"
                ))
            }
        }
        Expr::Case(_) => Err("CASE selects rows inside the aggregate".into()),
        Expr::ScalarFunction(f) => Err(format!("the function {} is applied to rows", f.name())),
        Expr::BinaryExpr(_) | Expr::Negative(_) => Err("row-level arithmetic".into()),
        _ => Err("not a column".into()),
    }
}

/// Casts that never fail and map distinct values to distinct values (false and true to 0 and
/// 1), except that integers beyond 2⁵³ round to the nearest double: DataFusion casts integer
/// arguments of `AVG` and `STDDEV` so itself, and rounding cannot silence a row's
/// contribution. Booleans to numbers, integers to wider integers, decimals with room or
/// doubles, floats to wider floats, text between its layouts.
fn lossless(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_digits = |t: &DataType| match t {
        Int8 | UInt8 => Some(3),
        Int16 | UInt16 => Some(5),
        Int32 | UInt32 => Some(10),
        Int64 => Some(19),
        UInt64 => Some(20),
        _ => None,
    };
    let int_rank = |t: &DataType| match t {
        Int8 => Some((1, true)),
        Int16 => Some((2, true)),
        Int32 => Some((4, true)),
        Int64 => Some((8, true)),
        UInt8 => Some((1, false)),
        UInt16 => Some((2, false)),
        UInt32 => Some((4, false)),
        UInt64 => Some((8, false)),
        _ => None,
    };
    if from == to {
        return true;
    }
    match (from, to) {
        (Boolean, t) => t.is_numeric(),
        (Float16, Float32 | Float64) | (Float32, Float64) => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (f, Float64) if int_rank(f).is_some() => true,
        (f, Decimal128(p, s) | Decimal256(p, s)) if int_digits(f).is_some() => {
            i16::from(*p) - i16::from(*s) >= int_digits(f).unwrap_or(99)
        }
        (f, t) => match (int_rank(f), int_rank(t)) {
            (Some((a, signed_a)), Some((b, signed_b))) => {
                (signed_a == signed_b && b >= a) || (!signed_a && signed_b && b > a)
            }
            _ => false,
        },
    }
}

/// One column of a `UNION ALL` from two branches: the more sensitive label, and unchanged
/// (bare) only where every branch passes a column unchanged, or (but for identifiers) a
/// constant. A union of an identifier with a string built from dimensions is no identifier
/// to join on, and of a measure with a computation is no measure to aggregate.
fn merge((a, b): (Label, Label)) -> Label {
    let plain = |l: &Label, top: Kind| {
        (l.bare && l.kind == top) || (l.kind == Kind::Constant && top != Kind::Identifier)
    };
    let top = a.kind.max(b.kind);
    let bare = plain(&a, top) && plain(&b, top);
    let narrowed: BTreeSet<String> = a.narrowed.union(&b.narrowed).cloned().collect();
    let mut out = if b.kind > a.kind { b } else { a };
    out.bare = bare;
    out.narrowed = narrowed;
    out
}

/// `plan` with its joins written as joins: `ON a.id = b.id` is planned as a join filter, and
/// `FROM a, b WHERE a.id = b.id` as a cross join under a filter; DataFusion's own rewrites make
/// them the inner joins they mean (the equalities in `ON`), so that the join rule judges what
/// runs. Where the rewrites do not apply, the plan as it is (and a join without equalities is
/// refused).
fn explicit_joins(plan: &LogicalPlan) -> LogicalPlan {
    use datafusion::optimizer::eliminate_cross_join::EliminateCrossJoin;
    use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
    use datafusion::optimizer::{Optimizer, OptimizerContext, OptimizerRule};
    let joins = datafusion::common::tree_node::TreeNode::exists(plan, |node| {
        Ok(matches!(node, LogicalPlan::Join(j) if j.on.is_empty()))
    })
    .unwrap_or(false);
    if !joins {
        return plan.clone();
    }
    // The SQL planner writes `ON a = b` as a join filter: its equalities move into `ON`
    // first, then cross joins under a filter become inner joins, whose keys move too.
    let rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = vec![
        Arc::new(ExtractEquijoinPredicate::new()),
        Arc::new(EliminateCrossJoin::new()),
        Arc::new(ExtractEquijoinPredicate::new()),
    ];
    let config = OptimizerContext::new().with_max_passes(1);
    Optimizer::with_rules(rules)
        .optimize(plan.clone(), &config, |_, _| {})
        .unwrap_or_else(|_| plan.clone())
}

/// Each dataset is read once by one aggregation (or one model's rows): a second copy of the
/// same rows, joined on the identifier with a condition (`LEFT JOIN patients f ON p.id = f.id
/// AND f.region = 'west'`), is a `FILTER` by another name, whose parts can be subtracted from
/// the total, and a self-join weighs each person by their own rows.
fn read_once(plan: &LogicalPlan) -> Result<(), EngineError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut twice = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && !seen.insert(scan.table_name.table().to_string())
        {
            twice = Some(scan.table_name.table().to_string());
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    match twice {
        None => Ok(()),
        Some(table) => Err(refuse(
            "read-once",
            format!(
                "the dataset {table:?} is read twice by one aggregation (a self-join, or a \
                 pool beside a join): one copy joined to the other with a condition is a FILTER \
                 by another name, whose parts subtract from the total, and a self-join weighs \
                 each person by their own rows"
            ),
        )),
    }
}

fn join_refused() -> EngineError {
    refuse(
        "join-on-identifiers",
        "a join may only link one person's rows across datasets, by equal identifiers (ON a.id \
         = b.id, other conditions beside it): a join on dimensions, a cross join or a join with \
         constants (VALUES) can put one person's rows into two groups of one answer that \
         differ only by that person, and their difference is that person's value",
    )
}

/// Which arguments of a scalar function may vary from row to row.
enum Varying {
    /// Any argument: the function returns a value (or NULL) for every input.
    All,
    /// Only this one; the others must be constants (a length, a position, a unit of time).
    Only(usize),
}

/// Scalar functions that return a value for every row they are given (NULL, NaN or infinity at
/// worst), and never fail: the allow-list of row-level functions. A function DataFusion adds
/// is refused until it is classified here; one that can fail on a value (`abs` of the smallest
/// integer, parsing a date from text, `make_date`, `sqrt` and logarithms of a negative number)
/// stays off it, since a failure is an answer.
const TOTAL_FUNCTIONS: &[(&str, Varying)] = &[
    ("lower", Varying::All),
    ("upper", Varying::All),
    ("initcap", Varying::All),
    ("trim", Varying::All),
    ("btrim", Varying::All),
    ("ltrim", Varying::All),
    ("rtrim", Varying::All),
    ("length", Varying::All),
    ("char_length", Varying::All),
    ("character_length", Varying::All),
    ("octet_length", Varying::All),
    ("bit_length", Varying::All),
    ("reverse", Varying::All),
    ("concat", Varying::All),
    ("concat_ws", Varying::All),
    ("replace", Varying::All),
    ("starts_with", Varying::All),
    ("ends_with", Varying::All),
    ("strpos", Varying::All),
    ("instr", Varying::All),
    ("md5", Varying::All),
    ("sha256", Varying::All),
    ("substr", Varying::Only(0)),
    ("substring", Varying::Only(0)),
    ("left", Varying::Only(0)),
    ("right", Varying::Only(0)),
    ("lpad", Varying::Only(0)),
    ("rpad", Varying::Only(0)),
    ("split_part", Varying::Only(0)),
    ("coalesce", Varying::All),
    ("nullif", Varying::All),
    ("nvl", Varying::All),
    ("ifnull", Varying::All),
    ("nvl2", Varying::All),
    ("greatest", Varying::All),
    ("least", Varying::All),
    ("round", Varying::Only(0)),
    ("trunc", Varying::Only(0)),
    ("floor", Varying::All),
    ("ceil", Varying::All),
    ("signum", Varying::All),
    ("isnan", Varying::All),
    ("iszero", Varying::All),
    ("date_part", Varying::Only(1)),
    ("datepart", Varying::Only(1)),
    ("date_trunc", Varying::Only(1)),
    ("datetrunc", Varying::Only(1)),
];

/// Refuses a row-level call of a function off [`TOTAL_FUNCTIONS`], or one whose fixed arguments
/// are not constants.
fn total_function(name: &str, args: &[Expr]) -> Result<(), EngineError> {
    let Some((_, varying)) = TOTAL_FUNCTIONS.iter().find(|(n, _)| *n == name) else {
        return Err(refuse(
            "total-functions",
            format!(
                "the function {name} is not on kura's list of functions that cannot fail on a \
                 value (a failure that depends on a value answers a question about it)"
            ),
        ));
    };
    if let Varying::Only(i) = varying {
        for (j, arg) in args.iter().enumerate() {
            if j != *i && !constant(arg) {
                return Err(refuse(
                    "total-functions",
                    format!(
                        "argument {} of {name} must be a constant: it can make the function \
                         fail on some rows' values",
                        j + 1
                    ),
                ));
            }
        }
    }
    total_constants(name, args)
}

/// The constant arguments of a row-level function within the range where it cannot fail (it
/// fails only when a row reaches it, so an invalid constant asks whether any row does).
fn total_constants(name: &str, args: &[Expr]) -> Result<(), EngineError> {
    let whole = |i: usize, range: std::ops::RangeInclusive<i64>, not: Option<i64>| {
        let Some(arg) = args.get(i) else {
            return Ok(());
        };
        match literal_int(arg) {
            Some(n) if range.contains(&n) && Some(n) != not => Ok(()),
            _ => Err(refuse(
                "total-functions",
                format!(
                    "argument {} of {name} must be a whole number from {} to {}{}: outside it the \
                     function fails on the rows that reach it",
                    i + 1,
                    range.start(),
                    range.end(),
                    not.map_or(String::new(), |n| format!(", not {n}"))
                ),
            )),
        }
    };
    let unit = |i: usize, units: &[&str]| match args.get(i).and_then(literal_text) {
        Some(u) if units.contains(&u.to_ascii_lowercase().as_str()) => Ok(()),
        _ => Err(refuse(
            "total-functions",
            format!(
                "argument {} of {name} must be one of {}",
                i + 1,
                units.join(", ")
            ),
        )),
    };
    const LENGTH: i64 = 1 << 20;
    match name {
        "substr" | "substring" => {
            whole(1, -LENGTH..=LENGTH, None)?;
            whole(2, 0..=LENGTH, None)
        }
        "left" | "right" => whole(1, -LENGTH..=LENGTH, None),
        "lpad" | "rpad" => whole(1, 0..=1000, None),
        "split_part" => whole(2, -1000..=1000, Some(0)),
        // A negative precision rounds an integer near its limit past it.
        "round" | "trunc" => whole(1, 0..=30, None),
        "date_part" | "datepart" => unit(
            0,
            &["year", "quarter", "month", "week", "day", "dow", "doy"],
        ),
        "date_trunc" | "datetrunc" => unit(0, &["year", "quarter", "month", "week", "day"]),
        _ => Ok(()),
    }
}

/// No function takes a decimal: rounding, flooring or ceiling one near its precision's limit
/// fails on the rows whose values are there.
fn total_argument(name: &str, arg: &Expr, schema: &DFSchema) -> Result<(), EngineError> {
    if matches!(
        arg.get_type(schema)?,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    ) {
        return Err(refuse(
            "total-functions",
            format!("{name} of a decimal can fail on values near its precision's limit"),
        ));
    }
    Ok(())
}

fn regex_refused(expr: &Expr) -> EngineError {
    refuse(
        "total-functions",
        format!(
            "regular expressions ({expr}) are refused: one fails to compile, or grows past its \
             limit, on the rows that reach it, so whether any row does is an answer; use LIKE"
        ),
    )
}

/// A whole-number literal, possibly negated or cast.
fn literal_int(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int8(Some(n)) => Some(i64::from(*n)),
            ScalarValue::Int16(Some(n)) => Some(i64::from(*n)),
            ScalarValue::Int32(Some(n)) => Some(i64::from(*n)),
            ScalarValue::Int64(Some(n)) => Some(*n),
            ScalarValue::UInt8(Some(n)) => Some(i64::from(*n)),
            ScalarValue::UInt16(Some(n)) => Some(i64::from(*n)),
            ScalarValue::UInt32(Some(n)) => Some(i64::from(*n)),
            ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok(),
            _ => None,
        },
        Expr::Alias(a) => literal_int(&a.expr),
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => literal_int(expr),
        Expr::Negative(e) => literal_int(e).and_then(i64::checked_neg),
        _ => None,
    }
}

fn literal_text(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        Expr::Alias(a) => literal_text(&a.expr),
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => literal_text(expr),
        _ => None,
    }
}

/// Row-level arithmetic only on integers (which wrap) and floats (which give infinity or NaN):
/// decimals fail when a result leaves their precision, dates and times when an interval takes
/// them out of range, each only for the rows whose values do.
fn total_arithmetic(b: &BinaryExpr, schema: &DFSchema) -> Result<(), EngineError> {
    use Operator::*;
    if !matches!(b.op, Plus | Minus | Multiply | Divide | Modulo) {
        return Ok(());
    }
    for side in [&b.left, &b.right] {
        let ty = side.get_type(schema)?;
        if !(ty.is_integer() || ty.is_floating() || ty == DataType::Null) {
            return Err(refuse(
                "total-functions",
                format!(
                    "arithmetic on {ty} ({}) can fail on the rows whose values leave its range: \
                     only integers and floating-point numbers are computed on rows",
                    Expr::BinaryExpr(b.clone())
                ),
            ));
        }
    }
    Ok(())
}

/// A literal, possibly cast or negated: the same for every row, whatever the data.
fn constant(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(..) => true,
        Expr::Alias(a) => constant(&a.expr),
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => constant(expr),
        Expr::Negative(e) => constant(e),
        _ => false,
    }
}

/// The one place a measure may flow is from its scan to the aggregate that consumes it,
/// unchanged or through a lossless cast: a computation on it anywhere in the plan (a derived
/// table's column, a filter, a join key, `CASE`, a function, arithmetic) can make one person's
/// value the only one that counts, however many people the group holds.
fn measure_computed(label: &Label, what: &str) -> EngineError {
    refuse(
        "measure-use",
        format!(
            "the measure {} is used in {what}: a measure may only reach an aggregate as it is \
             stored (or through a lossless cast), at any depth of the query: not in a derived \
             table's or CTE's expression, a filter, a join key, CASE or a function. Compute on \
             the aggregate instead (2 * SUM(x), not SUM(2 * x)), and select rows by dimensions",
            label.name()
        ),
    )
}

fn limit_before_aggregation() -> EngineError {
    refuse(
        "unsupported-construct",
        "LIMIT before an aggregation picks individual rows: it is refused",
    )
}

fn subquery_refused() -> EngineError {
    refuse(
        "unsupported-construct",
        "subquery expressions (IN/EXISTS/scalar subqueries) are refused: write a JOIN instead",
    )
}

/// [`Rules`] as a DataFusion analyzer rule: it runs on every plan the session executes, after
/// the built-in analyzer rules, and its failure aborts the query.
#[derive(Debug)]
pub struct RulesAnalyzer(pub Arc<Rules>);

impl AnalyzerRule for RulesAnalyzer {
    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &ConfigOptions,
    ) -> datafusion::error::Result<LogicalPlan> {
        self.0
            .check(&plan)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "kura_analysis_rules"
    }
}
