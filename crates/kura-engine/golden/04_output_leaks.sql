-- The four ways single queries gave away one person's values (issue 16), each tried several
-- ways. The small region "isle" holds 3 people, below the minimum of 5.

-- 1. Conditional aggregation: the group is large, the value comes from the few a condition picks.

-- CASE on a dimension inside SUM
SELECT SUM(CASE WHEN region = 'isle' THEN bmi ELSE 0 END) AS s FROM patients
=> refused aggregate-argument

-- CASE without ELSE inside AVG
SELECT sex, AVG(CASE WHEN region = 'isle' THEN bmi END) AS a FROM patients GROUP BY sex
=> refused aggregate-argument

-- a CASE that turns a boolean measure into a count (write SUM(CAST(diabetes AS INT)))
SELECT region, SUM(CASE WHEN diabetes THEN 1 ELSE 0 END) AS cases FROM patients GROUP BY region
=> refused aggregate-argument

-- NULLIF around a measure
SELECT SUM(NULLIF(bmi, 20.0)) FROM patients
=> refused aggregate-argument

-- COALESCE around a measure
SELECT age_band, AVG(COALESCE(bmi, 0)) FROM patients GROUP BY age_band
=> refused aggregate-argument

-- a boolean cast multiplied into a measure
SELECT SUM(bmi * CAST(region = 'isle' AS INT)) FROM patients
=> refused aggregate-argument

-- a threshold built from arithmetic: only values above 40 contribute
SELECT SUM(greatest(bmi - 40, 0)) FROM patients
=> refused aggregate-argument

-- a lossy cast: only values of 50 and above survive as non-zero
SELECT SUM(CAST(bmi / 50 AS BIGINT)) FROM patients
=> refused aggregate-argument

-- the condition on the other party's column, through the join
SELECT p.sex, AVG(CASE WHEN c.kind = 'lab' AND p.region = 'isle' THEN c.amount END) FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.sex
=> refused aggregate-argument

-- FILTER on a dimension
SELECT SUM(bmi) FILTER (WHERE region = 'isle') FROM patients
=> refused aggregate-filter

-- FILTER on the other party's dimension through the join
SELECT p.sex, SUM(c.amount) FILTER (WHERE p.region = 'isle') FROM patients p JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.sex
=> refused aggregate-filter

-- two FILTERs whose difference would be the small region
SELECT COUNT(*) FILTER (WHERE region <> 'isle') AS most, COUNT(*) AS every FROM patients
=> refused aggregate-filter

-- what remains allowed: a WHERE narrows every aggregate alike and the counts follow it
SELECT sex, SUM(bmi) FROM patients WHERE region = 'isle' GROUP BY sex
=> ok suppressed=2

-- ... and lossless casts
SELECT region, AVG(CAST(diabetes AS DOUBLE)), SUM(CAST(birth_year AS DOUBLE)) FROM patients GROUP BY region
=> ok suppressed=1

-- 3. HAVING as an oracle: the small group is suppressed before HAVING, and counted the same
-- whatever HAVING asks

SELECT region, SUM(bmi) FROM patients GROUP BY region HAVING SUM(bmi) > 100000
=> ok suppressed=1

SELECT region, SUM(bmi) FROM patients GROUP BY region HAVING SUM(bmi) < 100000
=> ok suppressed=1

SELECT region, COUNT(*) FROM patients GROUP BY region HAVING COUNT(*) = 3
=> ok suppressed=1

-- ... and so is LIMIT
SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY n DESC, region LIMIT 1
=> ok suppressed=1

-- 4. Complements inside one answer

SELECT region, COUNT(*) FROM patients GROUP BY ROLLUP(region)
=> refused grouping-sets

SELECT region, sex, SUM(bmi) FROM patients GROUP BY GROUPING SETS ((region), (region, sex), ())
=> refused grouping-sets

SELECT region AS g, SUM(bmi) AS s FROM patients GROUP BY region UNION ALL SELECT 'all', SUM(bmi) FROM patients
=> refused union-complement

SELECT region AS g, COUNT(*) AS n FROM patients GROUP BY region UNION ALL SELECT c.kind, COUNT(*) FROM claims c JOIN patients p ON c.patient_id = p.patient_id GROUP BY c.kind
=> refused union-complement

-- 5. One person's value, whatever the group size

SELECT region, MAX(bmi) FROM patients GROUP BY region
=> refused one-person-value

SELECT MIN(birth_year) FROM patients
=> refused one-person-value
