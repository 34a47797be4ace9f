-- Attempts to get row-level measure values out, tiny groups, and constructs the rule refuses.

-- select a measure
SELECT bmi FROM patients
=> refused measure-use

-- a measure next to an aggregate without grouping it
SELECT age_band, bmi FROM patients GROUP BY age_band, bmi
=> refused measure-use

-- group by a measure
SELECT bmi, COUNT(*) FROM patients GROUP BY bmi
=> refused measure-use

-- group by a function of a measure
SELECT round(bmi) AS b, COUNT(*) FROM patients GROUP BY round(bmi)
=> refused measure-use

-- group by a CASE on a measure
SELECT CASE WHEN bmi > 30 THEN 'obese' ELSE 'not' END AS c, COUNT(*) FROM patients GROUP BY CASE WHEN bmi > 30 THEN 'obese' ELSE 'not' END
=> refused measure-use

-- WHERE on a measure (tiny group)
SELECT COUNT(*) FROM patients WHERE bmi = 18.0
=> refused measure-use

-- WHERE range on a measure
SELECT AVG(bmi) FROM patients WHERE bmi > 37.5
=> refused measure-use

-- WHERE on a boolean measure
SELECT age_band, COUNT(*) FROM patients WHERE diabetes GROUP BY age_band
=> refused measure-use

-- WHERE NOT on a boolean measure
SELECT COUNT(*) FROM patients WHERE NOT diabetes
=> refused measure-use

-- measure IS NULL in WHERE
SELECT COUNT(*) FROM patients WHERE bmi IS NULL
=> refused measure-use

-- measure in a join condition
SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id = c.patient_id AND p.bmi > c.amount
=> refused measure-use

-- join on a measure
SELECT COUNT(*) FROM patients p JOIN claims c ON p.bmi = c.amount
=> refused measure-use

-- measure as ORDER BY key in a subquery that drops the privacy unit
SELECT AVG(bmi) FROM (SELECT bmi FROM patients ORDER BY bmi DESC) t
=> refused min-group-size

-- ORDER BY measure LIMIT 1 below the aggregate (the top person)
SELECT AVG(bmi) FROM (SELECT * FROM patients ORDER BY bmi DESC LIMIT 1) t
=> refused unsupported-construct

-- LIMIT 1 below the aggregate without ORDER BY
SELECT AVG(bmi) FROM (SELECT * FROM patients LIMIT 1) t
=> refused unsupported-construct

-- measure through a CTE
WITH t AS (SELECT bmi * 1 AS b FROM patients) SELECT b FROM t
=> refused measure-use

-- measure via CAST to text
SELECT CAST(bmi AS VARCHAR) AS s, COUNT(*) FROM patients GROUP BY CAST(bmi AS VARCHAR)
=> refused measure-use

-- measure combined with a dimension
SELECT age_band || CAST(bmi AS VARCHAR) AS s, COUNT(*) FROM patients GROUP BY age_band || CAST(bmi AS VARCHAR)
=> refused measure-use

-- HAVING on a row-level measure is not possible without grouping it
SELECT age_band, COUNT(*) FROM patients GROUP BY age_band, diabetes HAVING diabetes
=> refused measure-use

-- amount grouped
SELECT amount, COUNT(*) FROM claims GROUP BY amount
=> refused measure-use

-- amount in WHERE to isolate a claim
SELECT COUNT(*) FROM claims WHERE amount = 417.0
=> refused measure-use

-- amount in a derived table's WHERE
SELECT COUNT(*) FROM (SELECT * FROM claims WHERE amount > 499) t
=> refused measure-use

-- MIN of amount is not allowed for this column
SELECT MIN(amount) FROM claims
=> refused aggregate-functions

-- MAX of amount is not allowed for this column
SELECT kind, MAX(amount) FROM claims GROUP BY kind
=> refused aggregate-functions

-- median is not in the contract's list
SELECT median(bmi) FROM patients
=> refused aggregate-functions

-- variance is not in the contract's list
SELECT var(bmi) FROM patients
=> refused aggregate-functions

-- SUM DISTINCT reveals the set of values
SELECT SUM(DISTINCT bmi) FROM patients
=> refused aggregate-functions

-- AVG DISTINCT
SELECT AVG(DISTINCT bmi) FROM patients
=> refused aggregate-functions

-- array_agg of a measure
SELECT array_agg(bmi) FROM patients
=> refused aggregate-functions

-- string_agg of a dimension across people
SELECT string_agg(age_band, ',') FROM patients
=> refused aggregate-functions

-- first_value of a measure with ordering
SELECT first_value(bmi ORDER BY bmi) FROM patients
=> refused aggregate-functions

-- last_value
SELECT last_value(bmi) FROM patients
=> refused aggregate-functions

-- nth_value
SELECT nth_value(bmi, 2 ORDER BY bmi) FROM patients
=> refused aggregate-functions

-- approx_distinct is unknown
SELECT approx_distinct(bmi) FROM patients
=> refused aggregate-functions

-- approx_percentile_cont returns a member's value
SELECT approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY bmi) FROM patients
=> refused aggregate-functions

-- bit_or of a measure
SELECT bit_or(birth_year) FROM patients
=> refused aggregate-functions

-- bool_or of a boolean measure
SELECT bool_or(diabetes) FROM patients
=> refused aggregate-functions

-- ORDER BY inside an allowed aggregate
SELECT array_agg(age_band ORDER BY bmi) FROM patients
=> refused aggregate-functions

-- window function with a measure
SELECT age_band, AVG(bmi) OVER (PARTITION BY age_band) FROM patients
=> refused unsupported-construct

-- window function over aggregates
SELECT age_band, COUNT(*), SUM(COUNT(*)) OVER () FROM patients GROUP BY age_band
=> refused unsupported-construct

-- row_number
SELECT age_band, row_number() OVER (ORDER BY age_band) FROM patients GROUP BY age_band
=> refused unsupported-construct

-- scalar subquery in the select list
SELECT (SELECT MAX(bmi) FROM patients) AS m
=> refused unsupported-construct

-- scalar subquery comparing a measure
SELECT COUNT(*) FROM patients WHERE age_band = (SELECT MIN(age_band) FROM patients)
=> refused unsupported-construct

-- IN subquery on the identifier with a filter on a measure
SELECT COUNT(*) FROM patients WHERE patient_id IN (SELECT patient_id FROM claims WHERE amount > 400)
=> refused unsupported-construct

-- IN subquery on a dimension
SELECT COUNT(*) FROM patients WHERE region IN (SELECT kind FROM claims)
=> refused unsupported-construct

-- EXISTS subquery
SELECT COUNT(*) FROM patients p WHERE EXISTS (SELECT 1 FROM claims c WHERE c.patient_id = p.patient_id AND c.amount > 490)
=> refused unsupported-construct

-- NOT EXISTS subquery
SELECT COUNT(*) FROM patients p WHERE NOT EXISTS (SELECT 1 FROM claims c WHERE c.patient_id = p.patient_id)
=> refused unsupported-construct

-- UNION of aggregates (distinct union)
SELECT age_band, COUNT(*) FROM patients GROUP BY age_band UNION SELECT kind, COUNT(*) FROM claims GROUP BY kind
=> refused min-group-size

-- UNION ALL of raw rows then aggregation
SELECT COUNT(*) FROM (SELECT age_band AS v FROM patients UNION ALL SELECT kind FROM claims) t
=> refused min-group-size

-- INTERSECT to test membership
SELECT age_band FROM patients INTERSECT SELECT kind FROM claims
=> refused min-group-size

-- EXCEPT
SELECT age_band FROM patients EXCEPT SELECT kind FROM claims
=> refused min-group-size

-- plain SELECT * of a table
SELECT * FROM patients
=> refused identifier-use

-- plain rows of dimensions only (row-level, not aggregated)
SELECT age_band, sex FROM patients
=> refused min-group-size

-- DISTINCT of dimensions without aggregation
SELECT DISTINCT region FROM patients
=> refused min-group-size

-- a constant query without data
SELECT 1
=> refused min-group-size

-- VALUES
VALUES (1), (2)
=> refused min-group-size

-- nested aggregation: per-region counts aggregated again (MAX is refused first since the
-- output-rules rework; it was refused by min-group-size)
SELECT MAX(n) FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) t
=> refused one-person-value

-- group by the result of an inner aggregation
SELECT n, COUNT(*) FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) t GROUP BY n
=> refused unsupported-construct

-- DDL is refused
CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'
=> refused queries-only

-- DML is refused
INSERT INTO patients VALUES ('x', 'a', 'f', 'n', 1, true, 1.0)
=> refused queries-only

-- statements are refused
SET datafusion.execution.batch_size = 1
=> refused queries-only

-- a table outside the contract
SELECT COUNT(*) FROM information_schema.tables
=> error

-- placeholders are refused
SELECT COUNT(*) FROM patients WHERE age_band = $1
=> refused unsupported-construct

-- reading a file through a table function
SELECT COUNT(*) FROM read_csv('/etc/passwd')
=> error

-- unnest of an array built from measures
SELECT unnest(make_array(bmi)) FROM patients
=> refused unsupported-construct

-- a function on the restricted dimension that the contract does not list
SELECT birth_year % 10 AS d, COUNT(*) FROM patients GROUP BY birth_year % 10
=> ok

-- a listed-out function on the restricted dimension
SELECT sqrt(birth_year) AS d, COUNT(*) FROM patients GROUP BY sqrt(birth_year)
=> refused dimension-functions

-- another unlisted function on the restricted dimension
SELECT abs(birth_year) AS d, COUNT(*) FROM patients GROUP BY abs(birth_year)
=> refused dimension-functions

-- HAVING COUNT(*) = 1 to find singletons (suppressed by the threshold anyway)
SELECT region, COUNT(*) FROM patients GROUP BY region HAVING COUNT(*) < 5
=> ok suppressed=1

-- tiny group by two dimensions and a region filter: suppressed, never shown
SELECT age_band, sex, COUNT(*) AS n, AVG(bmi) FROM patients WHERE region = 'isle' GROUP BY age_band, sex
=> ok

-- ORDER BY a statistic with LIMIT 1 above the aggregation: still thresholded
SELECT region, AVG(bmi) AS b FROM patients GROUP BY region ORDER BY b DESC LIMIT 1
=> ok

-- NULL trick: group by a dimension that is NULL for one person (none here): ok
SELECT age_band IS NULL AS missing, COUNT(*) FROM patients GROUP BY age_band IS NULL
=> ok

-- a measure smuggled through a join key equality with a dimension
SELECT COUNT(*) FROM patients p JOIN claims c ON p.birth_year = c.amount
=> refused measure-use

-- ORDER BY MAX of a measure: ordering by one person's value (was ok; refused since the
-- output-rules rework)
SELECT age_band, COUNT(*) FROM patients GROUP BY age_band ORDER BY MAX(bmi)
=> refused one-person-value

-- measure in a CASE inside WHERE
SELECT COUNT(*) FROM patients WHERE CASE WHEN bmi > 30 THEN true ELSE false END
=> refused measure-use

-- measure compared to a dimension
SELECT COUNT(*) FROM patients WHERE bmi > birth_year
=> refused measure-use

-- counting rows in a self-join filtered by measure equality (matching people)
SELECT COUNT(*) FROM patients a JOIN patients b ON a.patient_id = b.patient_id WHERE a.bmi = b.bmi
=> refused measure-use

-- the hidden count name as an alias
SELECT COUNT(*) AS __kura_units_0 FROM patients
=> refused unsupported-construct

-- a function that returns the value of one row (a measure through greatest)
SELECT greatest(bmi, 0) AS g, COUNT(*) FROM patients GROUP BY greatest(bmi, 0)
=> refused measure-use

-- random sampling below the aggregation with LIMIT
SELECT AVG(bmi) FROM (SELECT * FROM patients ORDER BY random() LIMIT 3) t
=> refused unsupported-construct

-- OFFSET below the aggregation
SELECT AVG(bmi) FROM (SELECT * FROM patients OFFSET 199) t
=> refused unsupported-construct

-- a cross join with a filter on measures
SELECT COUNT(*) FROM patients a CROSS JOIN claims b WHERE a.bmi > b.amount
=> refused measure-use

-- grouping sets with a measure
SELECT age_band, COUNT(*) FROM patients GROUP BY GROUPING SETS ((age_band), (bmi))
=> refused measure-use

-- CUBE over dimensions: totals beside their parts (was ok)
SELECT age_band, sex, COUNT(*) FROM patients GROUP BY CUBE(age_band, sex)
=> refused grouping-sets

-- a recursive CTE
WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT n FROM r
=> refused unsupported-construct

-- EXPLAIN shows the plan, not statistics
EXPLAIN SELECT COUNT(*) FROM patients
=> refused unsupported-construct

-- UNION ALL where one branch is not aggregated
SELECT region, COUNT(*) FROM patients GROUP BY region UNION ALL SELECT kind, 1 FROM claims
=> refused min-group-size

-- UNION ALL of an aggregate and a constant row (a row no one stands behind)
SELECT region, COUNT(*) AS n FROM patients GROUP BY region UNION ALL SELECT 'x', 1
=> refused min-group-size

-- a user column may not take the threshold's reserved padding form
SELECT region, COUNT(*) AS n, 9223372036854775807 AS __kura_units_0 FROM patients GROUP BY region
=> refused min-group-size

-- nor hide inside a UNION ALL branch
SELECT region AS g, COUNT(*) AS n FROM patients GROUP BY region UNION ALL SELECT 'x', 1 AS __kura_units_0
=> refused unsupported-construct
