//! The example contract of the product brief: a hospital and a fitness company, one analysis.
//! `kura demo` runs it; tests start from it.

/// The analysis of [`activity_and_diabetes`].
pub const ANALYSIS: &str = "diabetes_by_activity";

/// The contract text with the two parties' public keys filled in.
pub fn activity_and_diabetes(hospital_pub: &str, fitness_pub: &str) -> String {
    format!(
        r#"version = 1
name = "activity-and-diabetes"
purpose = "How daily activity relates to diabetes diagnoses"

[[parties]]
name = "hospital-a"
public_key = "{hospital_pub}"
roles = ["provider", "receiver"]

[[parties]]
name = "fitness-b"
public_key = "{fitness_pub}"
roles = ["provider", "receiver"]

[[datasets]]
name = "ehr"
provider = "hospital-a"
privacy_unit = "patient_id"
columns = [
  {{ name = "patient_id", type = "utf8",    role = "identifier" }},
  {{ name = "age_band",   type = "utf8",    role = "dimension" }},
  {{ name = "diabetes",   type = "boolean", role = "measure" }},
]

[[datasets]]
name = "activity"
provider = "fitness-b"
privacy_unit = "patient_id"
columns = [
  {{ name = "patient_id", type = "utf8", role = "identifier" }},
  {{ name = "steps_band", type = "utf8", role = "dimension" }},
]

[[analyses]]
name = "{ANALYSIS}"
sql = "SELECT a.steps_band, COUNT(*) AS people, AVG(CAST(e.diabetes AS DOUBLE)) AS diabetes_rate FROM ehr e JOIN activity a ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band"
receivers = ["hospital-a", "fitness-b"]

[output]
min_group_size = 10

[retention]
delete_after = "run"

[enclave]
platforms = ["simulated"]
"#
    )
}

/// The fraud scenario's contract (`kura demo --scenario fraud`): two banks, each providing its
/// card transactions, train a logistic fraud model on both (`testdata/contracts/fraud-two-banks.toml`).
pub fn fraud_two_banks(bank_a_pub: &str, bank_b_pub: &str) -> String {
    fill(
        include_str!("../../../testdata/contracts/fraud-two-banks.toml"),
        |name| match name {
            "key:bank-a" => bank_a_pub.to_string(),
            "key:bank-b" => bank_b_pub.to_string(),
            other => panic!("the fraud contract has no placeholder {other}"),
        },
    )
}

/// The second half of the fraud scenario: a consortium's model, the file whose SHA-256 is
/// `model_sha256`, scores two other banks' new transactions
/// (`testdata/contracts/fraud-scoring.toml`).
pub fn fraud_scoring(keys: &[(&str, &str)], model_sha256: &str) -> String {
    fill(
        include_str!("../../../testdata/contracts/fraud-scoring.toml"),
        |name| match name {
            "sha256:fraud_model" => model_sha256.to_string(),
            key => key_of(keys, key, "scoring"),
        },
    )
}

/// The AML scenario's contract (`kura demo --scenario aml`): three banks list the accounts
/// that receive money from another bank's customers and pass it on, each bank only its own
/// (`testdata/contracts/aml-three-banks.toml`).
pub fn aml_three_banks(keys: &[(&str, &str)]) -> String {
    fill(
        include_str!("../../../testdata/contracts/aml-three-banks.toml"),
        |key| key_of(keys, key, "AML"),
    )
}

/// The statistics-provision scenario's contract (`kura demo --scenario statistics`): a mobile
/// operator provides a city with visit statistics only, under a published purpose, the records
/// deleted after the run (`testdata/contracts/statistics-provision.toml`).
pub fn statistics_provision(keys: &[(&str, &str)]) -> String {
    fill(
        include_str!("../../../testdata/contracts/statistics-provision.toml"),
        |key| key_of(keys, key, "statistics"),
    )
}

/// The ads scenario's contract (`kura demo --scenario ads`): a publisher and an advertiser
/// measure audience overlap and conversion by segment under differential privacy
/// (`testdata/contracts/ads-measurement.toml`).
pub fn ads_measurement(keys: &[(&str, &str)]) -> String {
    fill(
        include_str!("../../../testdata/contracts/ads-measurement.toml"),
        |key| key_of(keys, key, "ads"),
    )
}

/// The supply scenario's contract (`kura demo --scenario supply`): a maker and four suppliers
/// compare defect rates by process step, pooled across suppliers
/// (`testdata/contracts/supply-defects.toml`).
pub fn supply_defects(keys: &[(&str, &str)]) -> String {
    fill(
        include_str!("../../../testdata/contracts/supply-defects.toml"),
        |key| key_of(keys, key, "supply"),
    )
}

/// The public key of the party that placeholder `@key:PARTY@` names, from `keys`.
fn key_of(keys: &[(&str, &str)], placeholder: &str, contract: &str) -> String {
    keys.iter()
        .find(|(party, _)| Some(*party) == placeholder.strip_prefix("key:"))
        .map(|(_, k)| k.to_string())
        .unwrap_or_else(|| panic!("the {contract} contract has no placeholder {placeholder}"))
}

/// A contract template from `testdata/contracts/` with every `@NAME@` replaced by
/// `value(NAME)`: tests keep their contracts as files and fill in what only exists at run time
/// (`@key:PARTY@` with a fresh public key, and the like).
///
/// # Panics
/// On an `@` without its closing `@`: a broken fixture.
pub fn fill(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('@')
            .unwrap_or_else(|| panic!("an unclosed @ in a contract fixture: {after:.40}"));
        out.push_str(&value(&after[..end]));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fill_replaces_every_placeholder() {
        let t = "a = \"@key:x@\"\nb = @list@\nc = \"@key:x@\"\n";
        let filled = super::fill(t, |name| match name {
            "key:x" => "K".into(),
            "list" => "[1]".into(),
            other => panic!("{other}"),
        });
        assert_eq!(filled, "a = \"K\"\nb = [1]\nc = \"K\"\n");
    }

    /// Every fixture in `testdata/contracts/` is a valid contract once filled, the benches'
    /// too (nothing else runs those in CI).
    #[test]
    fn every_fixture_parses_when_filled() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/contracts");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let filled = super::fill(&text, |name| match name {
                "receivers" => "[\"hospital-a\"]".into(),
                "analysis" => "bench".into(),
                "sql" => "SELECT COUNT(*) FROM claims".into(),
                "adhoc" => String::new(),
                "sha256:fraud_model" => "ab".repeat(32),
                key => {
                    assert!(key.starts_with("key:"), "{}: @{key}@", path.display());
                    kura_crypto::SecretIdentity::generate().public().to_text()
                }
            });
            if let Err(e) = crate::Contract::parse(filled.as_bytes()) {
                panic!("{}: {e}", path.display());
            }
            parsed += 1;
        }
        assert_eq!(parsed, 12, "the fixtures in {}", dir.display());
    }
}
