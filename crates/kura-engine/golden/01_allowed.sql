-- Statistics the contract allows. Each must equal plain DataFusion minus suppressed groups.

-- count by a dimension
SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band
=> ok suppressed=0

-- the small region is suppressed, only its number is reported
SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region
=> ok suppressed=1

-- averages of a measure
SELECT sex, AVG(bmi) AS bmi FROM patients GROUP BY sex
=> ok suppressed=0

-- a rate from a boolean measure
SELECT age_band, AVG(CAST(diabetes AS DOUBLE)) AS rate FROM patients GROUP BY age_band
=> ok

-- a count of cases as the sum of a boolean cast to a number (every row contributes its 0 or 1;
-- the CASE form of the same sum is refused: see 04_output_leaks.sql)
SELECT region, SUM(CAST(diabetes AS INT)) AS cases FROM patients GROUP BY region
=> ok suppressed=1

-- join on the identifier, then aggregate
SELECT p.age_band, SUM(c.amount) AS total FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.age_band
=> ok

-- count distinct people per claim kind
SELECT c.kind, COUNT(DISTINCT c.patient_id) AS people FROM claims c GROUP BY c.kind
=> ok

-- whole-table statistics, no GROUP BY
SELECT COUNT(*) AS n, AVG(bmi) AS bmi FROM patients
=> ok

-- filter on a dimension
SELECT sex, COUNT(*) AS n FROM patients WHERE age_band = '40-59' GROUP BY sex
=> ok

-- filter on a dimension with IN
SELECT age_band, COUNT(*) FROM patients WHERE region IN ('north', 'south') GROUP BY age_band
=> ok

-- HAVING on a statistic
SELECT region, COUNT(*) AS n FROM patients GROUP BY region HAVING COUNT(*) > 10
=> ok

-- ORDER BY a statistic with LIMIT above the aggregation
SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY n DESC, age_band LIMIT 2
=> ok

-- min and max of a measure: the contract lists them, but each is one person's value
-- (was ok; refused since the output-rules rework)
SELECT sex, MIN(bmi) AS lo, MAX(bmi) AS hi FROM patients GROUP BY sex
=> refused one-person-value

-- stddev of a measure
SELECT region, STDDEV(bmi) AS sd FROM patients GROUP BY region
=> ok suppressed=1

-- an allowed function on a restricted dimension
SELECT FLOOR(birth_year / 10) AS decade, COUNT(*) AS n FROM patients GROUP BY FLOOR(birth_year / 10)
=> ok

-- arithmetic on statistics
SELECT sex, SUM(bmi) / COUNT(*) AS mean FROM patients GROUP BY sex
=> ok

-- a CTE that keeps rows, then aggregates
WITH adults AS (SELECT patient_id, age_band, bmi FROM patients WHERE age_band <> '18-39') SELECT age_band, AVG(bmi) FROM adults GROUP BY age_band
=> ok

-- a derived table that drops the privacy unit: people cannot be counted
SELECT t.kind, COUNT(*) FROM (SELECT kind, amount FROM claims WHERE kind <> 'lab') t GROUP BY t.kind
=> refused min-group-size

-- grouping by two dimensions; small cells suppressed
SELECT region, age_band, COUNT(*) AS n FROM patients GROUP BY region, age_band
=> ok

-- month dimension of type date
SELECT month, COUNT(*) AS n FROM claims GROUP BY month ORDER BY month
=> ok

-- date functions on an unrestricted dimension
SELECT date_part('month', month) AS m, SUM(amount) FROM claims GROUP BY date_part('month', month)
=> ok

-- string function on a dimension
SELECT upper(kind) AS k, COUNT(*) FROM claims GROUP BY upper(kind)
=> ok

-- CASE on a dimension as group key
SELECT CASE WHEN age_band IN ('60-79', '80+') THEN 'old' ELSE 'young' END AS grp, COUNT(*) FROM patients GROUP BY CASE WHEN age_band IN ('60-79', '80+') THEN 'old' ELSE 'young' END
=> ok

-- three-way statistics across a join, filter on two dimensions
SELECT p.sex, c.kind, COUNT(*) AS n, AVG(c.amount) AS mean FROM patients p JOIN claims c ON p.patient_id = c.patient_id WHERE p.region <> 'isle' AND c.kind <> 'drug' GROUP BY p.sex, c.kind
=> ok

-- implicit join written in WHERE
SELECT p.age_band, COUNT(*) FROM patients p, claims c WHERE p.patient_id = c.patient_id GROUP BY p.age_band
=> ok

-- left join keeps patients without claims
SELECT p.region, COUNT(c.claim_id) AS claims FROM patients p LEFT JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.region
=> ok suppressed=1

-- count of an identifier is a count
SELECT kind, COUNT(claim_id) FROM claims GROUP BY kind
=> ok

-- an aggregate with FILTER on a measure picks people by their value
-- (was ok; refused since the output-rules rework)
SELECT age_band, COUNT(*) FILTER (WHERE bmi > 30) AS obese FROM patients GROUP BY age_band
=> refused aggregate-filter

-- a constant column
SELECT 'all' AS scope, COUNT(*) FROM patients
=> ok

-- BETWEEN on a dimension
SELECT sex, COUNT(*) FROM patients WHERE birth_year BETWEEN 1950 AND 1970 GROUP BY sex
=> ok

-- measure arithmetic inside the aggregate: refused (was ok), the same statistic written
-- outside the aggregate is allowed
SELECT sex, AVG(bmi * 2 + 1) AS x FROM patients GROUP BY sex
=> refused aggregate-argument

SELECT sex, 2 * AVG(bmi) + 1 AS x FROM patients GROUP BY sex
=> ok

-- self-join on the identifier
SELECT a.kind, COUNT(*) FROM claims a JOIN claims b ON a.patient_id = b.patient_id GROUP BY a.kind
=> ok

-- LIKE on a dimension
SELECT kind, COUNT(*) FROM claims WHERE kind LIKE 'l%' GROUP BY kind
=> ok

-- IS NULL on a dimension
SELECT region, COUNT(*) FROM patients WHERE age_band IS NOT NULL GROUP BY region
=> ok suppressed=1

-- ORDER BY a dimension
SELECT kind, SUM(amount) AS total FROM claims GROUP BY kind ORDER BY kind DESC
=> ok

-- count distinct of a dimension
SELECT region, COUNT(DISTINCT age_band) FROM patients GROUP BY region
=> ok suppressed=1

-- nested CTEs that only filter
WITH a AS (SELECT * FROM claims WHERE kind = 'visit'), b AS (SELECT * FROM a WHERE amount IS NOT NULL OR kind = 'visit') SELECT COUNT(*) FROM a
=> ok

-- group by position
SELECT kind, COUNT(*) FROM claims GROUP BY 1
=> ok

-- cast of a dimension
SELECT CAST(birth_year AS VARCHAR) AS y, COUNT(*) FROM patients GROUP BY CAST(birth_year AS VARCHAR)
=> ok

-- coalesce on a dimension
SELECT coalesce(region, 'none') AS r, COUNT(*) FROM patients GROUP BY coalesce(region, 'none')
=> ok suppressed=1

-- statistics combined from two aggregates
SELECT kind, MAX(amount) - MIN(amount) AS spread FROM claims GROUP BY kind
=> refused aggregate-functions

-- avg of amount is allowed for this column
SELECT kind, AVG(amount) FROM claims GROUP BY kind
=> ok

-- two datasets' privacy units both counted: a join then group on the claims side
SELECT c.month, COUNT(DISTINCT p.patient_id) FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY c.month
=> ok

-- HAVING on an average
SELECT age_band, AVG(bmi) AS b FROM patients GROUP BY age_band HAVING AVG(bmi) > 20
=> ok

-- round on the restricted dimension is listed
SELECT round(birth_year / 5) AS half, COUNT(*) FROM patients GROUP BY round(birth_year / 5)
=> ok

-- NOT on a dimension predicate
SELECT kind, COUNT(*) FROM claims WHERE NOT (kind = 'lab') GROUP BY kind
=> ok

-- a derived table that keeps the privacy unit
SELECT t.kind, COUNT(*) FROM (SELECT patient_id, kind, amount FROM claims WHERE kind <> 'lab') t GROUP BY t.kind
=> ok

-- UNION ALL of two aggregated branches over different datasets; each row keeps its own counts
SELECT 'region' AS dim, region AS value, COUNT(*) AS n FROM patients GROUP BY region UNION ALL SELECT 'kind', kind, COUNT(*) FROM claims GROUP BY kind
=> ok suppressed=1

-- UNION ALL where both branches read patients: a total beside its parts is a complement
-- (was ok; refused since the output-rules rework)
SELECT p.age_band AS g, SUM(c.amount) AS total FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.age_band UNION ALL SELECT region, SUM(bmi) FROM patients GROUP BY region
=> refused union-complement

-- the same with the joining branch second (was ok)
SELECT region AS g, COUNT(*) AS n FROM patients GROUP BY region UNION ALL SELECT p.sex, COUNT(*) FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.sex
=> refused union-complement

-- UNION ALL under an outer ORDER BY and LIMIT
SELECT * FROM (SELECT region AS g, COUNT(*) AS n FROM patients GROUP BY region UNION ALL SELECT kind, COUNT(*) FROM claims GROUP BY kind) t ORDER BY n DESC LIMIT 3
=> ok

-- three UNION ALL branches, two of them over patients (was ok)
SELECT sex AS g, COUNT(*) AS n FROM patients GROUP BY sex UNION ALL SELECT age_band, COUNT(*) FROM patients GROUP BY age_band HAVING COUNT(*) > 10 UNION ALL SELECT kind, COUNT(DISTINCT patient_id) FROM claims GROUP BY kind
=> refused union-complement

-- two branches over disjoint datasets, HAVING in one
SELECT age_band AS g, COUNT(*) AS n FROM patients GROUP BY age_band HAVING COUNT(*) > 10 UNION ALL SELECT kind, COUNT(DISTINCT patient_id) FROM claims GROUP BY kind
=> ok suppressed=0

-- HAVING sees only released groups: the small region is counted as suppressed before it
SELECT region, COUNT(*) AS n FROM patients GROUP BY region HAVING COUNT(*) < 10
=> ok suppressed=1
