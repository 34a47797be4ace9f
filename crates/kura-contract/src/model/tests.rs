use kura_crypto::SecretIdentity;

use super::*;
use crate::{SignatureStatus, SignedContract, sign, verify_all};

struct Fixture {
    hospital: SecretIdentity,
    fitness: SecretIdentity,
}

impl Fixture {
    fn new() -> Self {
        Self {
            hospital: SecretIdentity::generate(),
            fitness: SecretIdentity::generate(),
        }
    }

    fn text(&self) -> String {
        crate::example::activity_and_diabetes(
            &self.hospital.public().to_text(),
            &self.fitness.public().to_text(),
        )
    }

    fn parse_with(&self, from: &str, to: &str) -> Result<Contract, ContractError> {
        let text = self.text();
        assert!(text.contains(from), "fixture lacks {from:?}");
        Contract::parse(text.replacen(from, to, 1).as_bytes())
    }
}

#[test]
fn the_design_example_parses() {
    let f = Fixture::new();
    let c = Contract::parse(f.text().as_bytes()).unwrap();
    assert_eq!(c.parties.len(), 2);
    assert_eq!(c.datasets[0].privacy_unit, "patient_id");
    assert_eq!(c.retention.delete_after, DeleteAfter::Run);
    assert_eq!(c.enclave.platforms, vec![Platform::Simulated]);
    assert_eq!(c.id(), &ContractId::of(f.text().as_bytes()));
    assert!(c.may_run("fitness-b", &c.analyses[0]));
}

#[test]
fn the_id_changes_with_any_byte() {
    let f = Fixture::new();
    let a = Contract::parse(f.text().as_bytes()).unwrap();
    let b = Contract::parse(format!("{}\n", f.text()).as_bytes()).unwrap();
    assert_ne!(a.id(), b.id());
}

#[test]
fn refusals_name_the_problem() {
    let f = Fixture::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "provider = \"hospital-a\"",
            "provider = \"clinic-z\"",
            "names party \"clinic-z\", which is not in [[parties]]",
        ),
        (
            "receivers = [\"hospital-a\", \"fitness-b\"]",
            "receivers = [\"hospital-a\", \"nobody\"]",
            "party \"nobody\"",
        ),
        (
            "roles = [\"provider\", \"receiver\"]\n\n[[parties]]\nname = \"fitness-b\"",
            "roles = [\"provider\"]\n\n[[parties]]\nname = \"fitness-b\"",
            "party \"hospital-a\" must have the receiver role",
        ),
        (
            "name = \"activity\"",
            "name = \"ehr\"",
            "dataset \"ehr\" is declared more than once",
        ),
        (
            "name = \"fitness-b\"\npublic",
            "name = \"hospital-a\"\npublic",
            "party \"hospital-a\" is declared more than once",
        ),
        (
            "privacy_unit = \"patient_id\"",
            "privacy_unit = \"age_band\"",
            "must have role = \"identifier\"",
        ),
        (
            "privacy_unit = \"patient_id\"",
            "privacy_unit = \"pid\"",
            "is not one of the dataset's columns",
        ),
        (
            "min_group_size = 10",
            "min_grup_size = 10",
            "unknown field `min_grup_size`",
        ),
        ("min_group_size = 10", "min_group_size = 0", "at least 1"),
        (
            "delete_after = \"run\"",
            "delete_after = \"tomorrow\"",
            "RFC 3339",
        ),
        (
            "platforms = [\"simulated\"]",
            "platforms = []",
            "enclave.platforms is empty",
        ),
        (
            "platforms = [\"simulated\"]",
            "platforms = [\"sev-snp-ish\"]",
            "unknown platform",
        ),
        ("version = 1", "version = 2", "version 2 is not supported"),
        (
            "name = \"hospital-a\"",
            "name = \"Hospital A\"",
            "party name \"Hospital A\" is invalid",
        ),
        (
            "{ name = \"age_band\",",
            "{ name = \"patient_id\",",
            "column \"ehr.patient_id\" is declared more than once",
        ),
        (
            "type = \"boolean\"",
            "type = \"bool\"",
            "unknown variant `bool`",
        ),
        (
            "receivers = [\"hospital-a\", \"fitness-b\"]",
            "receivers = []",
            "has no receivers",
        ),
    ];
    for (from, to, expected) in cases {
        let err = f.parse_with(from, to).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "replacing {from:?} with {to:?}: got {err:?}, expected {expected:?}"
        );
    }
}

#[test]
fn a_bad_public_key_is_refused() {
    let f = Fixture::new();
    let key = f.hospital.public().to_text();
    let err = f.parse_with(&key, "kura-pub-v1:AAAA").unwrap_err();
    assert!(
        matches!(err, ContractError::BadKey { ref party, .. } if party == "hospital-a"),
        "{err}"
    );
}

/// The v1 form of a v2 key: its signing and classic halves only.
fn classic_only(key: &SecretIdentity) -> String {
    let raw = kura_crypto::b64::decode(&key.public().to_text()["kura-pub-v2:".len()..]).unwrap();
    format!("kura-pub-v1:{}", kura_crypto::b64::encode(&raw[..64]))
}

#[test]
fn the_post_quantum_kem_is_the_default_and_the_classic_one_must_be_pinned() {
    let f = Fixture::new();
    let c = Contract::parse(f.text().as_bytes()).unwrap();
    assert_eq!(c.crypto.kem, kura_crypto::Kem::XWing);

    // A receiver whose key cannot receive X-Wing: refused, saying what to do.
    let v1 = classic_only(&f.hospital);
    let err = f
        .parse_with(&f.hospital.public().to_text(), &v1)
        .unwrap_err();
    assert!(
        matches!(&err, ContractError::BadKey { party, reason }
            if party == "hospital-a" && reason.contains("kem = \"x25519\"")),
        "{err}"
    );
    // Pinned, it parses; the pin is part of the signed bytes.
    let pinned =
        f.text().replace(&f.hospital.public().to_text(), &v1) + "\n[crypto]\nkem = \"x25519\"\n";
    let c = Contract::parse(pinned.as_bytes()).unwrap();
    assert_eq!(c.crypto.kem, kura_crypto::Kem::X25519);
    // Anything else is refused.
    let other = f.text() + "\n[crypto]\nkem = \"kyber512\"\n";
    assert!(Contract::parse(other.as_bytes()).is_err());
}

#[test]
fn the_same_key_for_two_parties_is_refused() {
    let f = Fixture::new();
    let text = f.text().replace(
        &f.fitness.public().to_text(),
        &f.hospital.public().to_text(),
    );
    let err = Contract::parse(text.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        ContractError::SharedKey("hospital-a".into(), "fitness-b".into())
    );
}

#[test]
fn deadlines_parse() {
    let f = Fixture::new();
    let c = f
        .parse_with(
            "delete_after = \"run\"",
            "delete_after = \"2027-01-31T00:00:00Z\"",
        )
        .unwrap();
    assert!(matches!(c.retention.delete_after, DeleteAfter::Deadline(t) if t.year() == 2027));
}

#[test]
fn signatures_cover_the_exact_bytes() {
    let f = Fixture::new();
    let c = Contract::parse(f.text().as_bytes()).unwrap();
    let (party, sig_h) = sign(&c, &f.hospital).unwrap();
    assert_eq!(party, "hospital-a");
    let (_, sig_f) = sign(&c, &f.fitness).unwrap();

    let all = verify_all(&c, |p| {
        Some(if p == "hospital-a" {
            sig_h.clone()
        } else {
            sig_f.clone()
        })
    });
    assert!(
        all.iter().all(|s| s.status == SignatureStatus::Valid),
        "{all:?}"
    );

    let missing = verify_all(&c, |p| (p == "hospital-a").then(|| sig_h.clone()));
    assert_eq!(missing[1].status, SignatureStatus::Missing);

    // A signature swapped into the other party's file does not verify.
    let swapped = verify_all(&c, |_| Some(sig_h.clone()));
    assert_eq!(swapped[1].status, SignatureStatus::Invalid);

    // A signature over other bytes (one added space) does not verify.
    let c2 = Contract::parse(format!("{} ", f.text()).as_bytes()).unwrap();
    let changed = verify_all(&c2, |p| {
        Some(if p == "hospital-a" {
            sig_h.clone()
        } else {
            sig_f.clone()
        })
    });
    assert!(changed.iter().all(|s| s.status == SignatureStatus::Invalid));

    // A stranger's key cannot sign.
    assert_eq!(
        sign(&c, &SecretIdentity::generate()).unwrap_err(),
        ContractError::NotAParty
    );
}

#[test]
fn a_signed_contract_needs_every_signature() {
    let f = Fixture::new();
    let c = Contract::parse(f.text().as_bytes()).unwrap();
    let (_, sig_h) = sign(&c, &f.hospital).unwrap();
    let (_, sig_f) = sign(&c, &f.fitness).unwrap();
    let err = SignedContract::verify(c.clone(), |p| (p == "hospital-a").then(|| sig_h.clone()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the contract is not signed by all parties: party \"fitness-b\" has not signed"
    );
    let signed = SignedContract::verify(c, |p| {
        Some(if p == "hospital-a" {
            sig_h.clone()
        } else {
            sig_f.clone()
        })
    })
    .unwrap();
    assert_eq!(signed.signatures().len(), 2);
    assert_eq!(signed.name, "activity-and-diabetes");
}

#[test]
fn warnings_name_what_thresholds_and_listed_aggregates_do_not_stop() {
    let f = Fixture::new();
    let plain = Contract::parse(f.text().as_bytes()).unwrap();
    assert!(
        plain.warnings().is_empty(),
        "no [adhoc]: nothing to warn about"
    );
    let adhoc = "[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n";
    let with = |extra: &str| {
        let text = f.text().replacen(
            "roles = [\"provider\", \"receiver\"]",
            "roles = [\"provider\", \"receiver\", \"analyst\"]",
            1,
        ) + adhoc
            + extra;
        Contract::parse(text.as_bytes()).unwrap()
    };
    let w = with("").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("[adhoc] without [privacy.dp]") && w[0].contains("overlap_control"));
    let w = with("aggregates = [\"count\", \"max\", \"median\"]\n").warnings();
    assert!(
        w[1].contains("max, median") && w[1].contains("one-person-value"),
        "{w:?}"
    );
    let w = with("overlap_control = true\n").warnings();
    assert!(
        w[0].contains("a total and all but one of its parts"),
        "{w:?}"
    );
    let w = with(
        "\n[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.1\n\
         domains = { \"activity.steps_band\" = [\"high\", \"low\"] }\n",
    )
    .warnings();
    assert!(w.is_empty(), "{w:?}");
    let c = with(
        "require_dp = true\n\n[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.1\n\
         domains = { \"activity.steps_band\" = [\"high\", \"low\"] }\n",
    );
    assert!(c.adhoc.unwrap().require_dp);
    // overlap_memory needs overlap_control, and room for at least one entry; require_dp needs
    // [privacy.dp].
    for (extra, why) in [
        ("require_dp = true\n", "no [privacy.dp]"),
        ("overlap_memory = 10\n", "overlap_control is not"),
        ("overlap_control = true\noverlap_memory = 0\n", "at least 1"),
    ] {
        let text = f.text().replacen(
            "roles = [\"provider\", \"receiver\"]",
            "roles = [\"provider\", \"receiver\", \"analyst\"]",
            1,
        ) + adhoc
            + extra;
        let err = Contract::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn accept_entries_pin_the_workload_unless_they_say_otherwise() {
    let f = Fixture::new();
    let tdx = |extra: &str| {
        f.text().replace(
            "platforms = [\"simulated\"]",
            "platforms = [\"simulated\", \"tdx\", \"sev-snp\"]",
        ) + &format!(
            "\n[[enclave.accept]]\nplatform = \"tdx\"\nmeasurements = [\"{}\"]\n{extra}\n",
            "ab".repeat(48)
        )
    };
    let parse = |text: String| Contract::parse(text.as_bytes()).map_err(|e| e.to_string());
    // MRTD alone, or with RTMR0: firmware only, refused unless the contract says so.
    for extra in ["", "registers = { rtmr0 = \"00\" }"] {
        let err = parse(tdx(extra)).unwrap_err();
        assert!(err.contains("pins only firmware"), "{err}");
    }
    parse(tdx("firmware_only = true")).unwrap();
    parse(tdx("registers = { rtmr2 = \"00\" }")).unwrap();
    parse(tdx("registers = { mrconfigid = \"00\" }")).unwrap();
    // Settings of one platform on another, or out of range.
    let snp = |extra: &str| {
        tdx("firmware_only = true")
            + &format!(
                "\n[[enclave.accept]]\nplatform = \"sev-snp\"\nmeasurements = [\"{}\"]\n{extra}\n",
                "cd".repeat(48)
            )
    };
    parse(snp("vmpl = 1")).unwrap();
    for (extra, why) in [
        ("vmpl = 4", "vmpl must be 0, 1, 2 or 3"),
        ("firmware_only = true", "firmware_only is a TDX setting"),
    ] {
        let err = parse(snp(extra)).unwrap_err();
        assert!(err.contains(why), "{extra}: {err}");
    }
    let err = parse(tdx("firmware_only = true\nvmpl = 0")).unwrap_err();
    assert!(err.contains("vmpl is a SEV-SNP setting"), "{err}");
}

#[test]
fn platform_names_are_what_contracts_spell() {
    let names = ["simulated", "sev-snp", "tdx", "sgx", "nitro"];
    for (p, name) in Platform::ALL.into_iter().zip(names) {
        assert_eq!(p.as_str(), name);
        assert_eq!(Platform::parse(name), Some(p));
    }
    assert_eq!(Platform::parse("SEV-SNP"), None);
}
