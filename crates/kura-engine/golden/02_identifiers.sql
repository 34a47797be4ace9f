-- Attempts to get identifier values out.

-- select the identifier
SELECT patient_id FROM patients
=> refused identifier-use

-- select it next to an aggregate
SELECT patient_id, COUNT(*) FROM patients GROUP BY patient_id
=> refused identifier-use

-- group by the identifier without selecting it
SELECT COUNT(*) FROM patients GROUP BY patient_id
=> refused identifier-use

-- identifier through a cast
SELECT CAST(patient_id AS VARCHAR) AS x, COUNT(*) FROM patients GROUP BY CAST(patient_id AS VARCHAR)
=> refused identifier-use

-- identifier through concatenation
SELECT patient_id || '' AS x, COUNT(*) FROM patients GROUP BY patient_id || ''
=> refused identifier-use

-- identifier through concat()
SELECT concat('x', patient_id) AS x, COUNT(*) FROM patients GROUP BY concat('x', patient_id)
=> refused identifier-use

-- identifier through substr
SELECT substr(patient_id, 4, 4) AS x, COUNT(*) FROM patients GROUP BY substr(patient_id, 4, 4)
=> refused identifier-use

-- identifier through upper
SELECT upper(patient_id) AS x, COUNT(*) FROM patients GROUP BY upper(patient_id)
=> refused identifier-use

-- identifier through length (one bit at a time)
SELECT length(patient_id) AS l, COUNT(*) FROM patients GROUP BY length(patient_id)
=> refused identifier-use

-- identifier through a hash
SELECT md5(patient_id) AS h, COUNT(*) FROM patients GROUP BY md5(patient_id)
=> refused identifier-use

-- identifier in CASE as a group key
SELECT CASE WHEN patient_id = 'pat0001' THEN 'x' ELSE 'y' END AS g, COUNT(*) FROM patients GROUP BY CASE WHEN patient_id = 'pat0001' THEN 'x' ELSE 'y' END
=> refused identifier-use

-- identifier compared with a literal in WHERE (targets one person)
SELECT AVG(bmi) FROM patients WHERE patient_id = 'pat0007'
=> refused identifier-use

-- identifier in an IN list
SELECT AVG(bmi) FROM patients WHERE patient_id IN ('pat0007', 'pat0008')
=> refused identifier-use

-- identifier with LIKE
SELECT COUNT(*) FROM patients WHERE patient_id LIKE 'pat000%'
=> refused identifier-use

-- identifier range
SELECT COUNT(*) FROM patients WHERE patient_id > 'pat0100'
=> refused identifier-use

-- identifier BETWEEN
SELECT AVG(bmi) FROM patients WHERE patient_id BETWEEN 'pat0001' AND 'pat0002'
=> refused identifier-use

-- MIN of an identifier
SELECT MIN(patient_id) FROM patients
=> refused identifier-use

-- MAX of an identifier per group
SELECT age_band, MAX(patient_id) FROM patients GROUP BY age_band
=> refused identifier-use

-- SUM of a cast identifier
SELECT SUM(CAST(substr(patient_id, 4) AS INT)) FROM patients
=> refused identifier-use

-- AVG of the identifier length
SELECT AVG(length(patient_id)) FROM patients
=> refused identifier-use

-- COUNT DISTINCT of a function of the identifier
SELECT COUNT(DISTINCT upper(patient_id)) FROM patients
=> refused identifier-use

-- COUNT of a computed identifier
SELECT COUNT(substr(patient_id, 1, 4)) FROM patients
=> refused identifier-use

-- identifier joined to a dimension
SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id = c.kind
=> refused identifier-use

-- identifier joined to a computed value
SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id = upper(c.patient_id)
=> refused identifier-use

-- identifier joined to VALUES (targets listed people)
SELECT AVG(p.bmi) FROM patients p JOIN (VALUES ('pat0001'), ('pat0002')) v(id) ON p.patient_id = v.id
=> refused identifier-use

-- identifier non-equi join
SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id < c.patient_id
=> refused identifier-use

-- identifier in a join filter beside the equality
SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id = c.patient_id AND c.claim_id = 'clm00010'
=> refused identifier-use

-- identifier from a CTE
WITH t AS (SELECT patient_id AS id FROM patients) SELECT id FROM t
=> refused identifier-use

-- identifier aliased twice through derived tables
SELECT x.b FROM (SELECT a AS b FROM (SELECT patient_id AS a FROM patients) y) x
=> refused identifier-use

-- group by an aliased identifier from a CTE
WITH t AS (SELECT patient_id AS pid, bmi FROM patients) SELECT pid, AVG(bmi) FROM t GROUP BY pid
=> refused identifier-use

-- ORDER BY the identifier in a subquery without LIMIT changes nothing: the count of everyone
SELECT COUNT(*) FROM (SELECT * FROM patients ORDER BY patient_id) t
=> ok

-- the claim id (another identifier) selected
SELECT claim_id, SUM(amount) FROM claims GROUP BY claim_id
=> refused identifier-use

-- identifier in a HAVING
SELECT age_band, COUNT(*) FROM patients GROUP BY age_band HAVING MIN(patient_id) = 'pat0001'
=> refused identifier-use

-- identifier through a NULL trick: NULLIF
SELECT COUNT(NULLIF(patient_id, 'pat0001')) FROM patients
=> refused identifier-use

-- identifier through coalesce
SELECT coalesce(patient_id, 'x') AS v, COUNT(*) FROM patients GROUP BY coalesce(patient_id, 'x')
=> refused identifier-use

-- identifier IS NULL as group key
SELECT patient_id IS NULL AS v, COUNT(*) FROM patients GROUP BY patient_id IS NULL
=> refused identifier-use

-- COUNT with CASE on the identifier
SELECT COUNT(CASE WHEN patient_id = 'pat0042' THEN 1 END) FROM patients
=> refused identifier-use

-- SUM with CASE on the identifier (probes one person's measure)
SELECT SUM(CASE WHEN patient_id = 'pat0042' THEN bmi ELSE 0 END) FROM patients
=> refused identifier-use

-- aggregate FILTER on the identifier
SELECT AVG(bmi) FILTER (WHERE patient_id = 'pat0042') FROM patients
=> refused identifier-use

-- the identifier in arithmetic
SELECT SUM(length(patient_id) * 0) FROM patients
=> refused identifier-use

-- identifier hidden in string_agg
SELECT string_agg(patient_id, ',') FROM patients
=> refused aggregate-functions

-- identifier in array_agg
SELECT age_band, array_agg(patient_id) FROM patients GROUP BY age_band
=> refused aggregate-functions

-- first_value of the identifier
SELECT first_value(patient_id) FROM patients
=> refused aggregate-functions

-- last_value of the identifier
SELECT last_value(patient_id) FROM patients
=> refused aggregate-functions

-- identifier in a window
SELECT patient_id, COUNT(*) OVER () FROM patients
=> refused unsupported-construct

-- identifier via a reserved hidden column name
SELECT MAX(patient_id) AS __kura_units_0 FROM patients
=> refused identifier-use

-- identifier compared to itself plus a literal trick
SELECT COUNT(*) FROM patients WHERE patient_id = patient_id || ''
=> refused identifier-use

-- identifier starts_with function
SELECT COUNT(*) FROM patients WHERE starts_with(patient_id, 'pat00')
=> refused identifier-use

-- identifier with regexp
SELECT COUNT(*) FROM patients WHERE regexp_like(patient_id, '^pat000[1-3]$')
=> refused identifier-use

-- identifier as a join key to a CTE of literals
WITH target AS (SELECT 'pat0005' AS id) SELECT AVG(p.bmi) FROM patients p JOIN target t ON p.patient_id = t.id
=> refused identifier-use

-- identifier in GROUP BY ROLLUP
SELECT age_band, COUNT(*) FROM patients GROUP BY ROLLUP(age_band, patient_id)
=> refused identifier-use

-- identifier output from a left join
SELECT c.patient_id FROM patients p LEFT JOIN claims c ON p.patient_id = c.patient_id
=> refused identifier-use

-- identifier in a UNION ALL branch
SELECT patient_id FROM patients UNION ALL SELECT patient_id FROM claims
=> refused identifier-use

-- identifier behind DISTINCT
SELECT DISTINCT patient_id FROM patients
=> refused identifier-use

-- identifier bytes through ascii()
SELECT ascii(patient_id) AS a, COUNT(*) FROM patients GROUP BY ascii(patient_id)
=> refused identifier-use
