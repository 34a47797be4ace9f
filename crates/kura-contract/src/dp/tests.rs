use kura_crypto::SecretIdentity;

use super::*;

fn contract(dp: &str) -> Result<Contract, ContractError> {
    let text = crate::example::activity_and_diabetes(
        &SecretIdentity::generate().public().to_text(),
        &SecretIdentity::generate().public().to_text(),
    );
    Contract::parse(format!("{text}\n[privacy.dp]\n{dp}").as_bytes())
}

const BASE: &str = "epsilon = 1.0\nquery_epsilon = 0.1\n";

#[test]
fn settings_parse_with_defaults() {
    let c = contract(&format!(
        "{BASE}delta = 1e-6\nquery_delta = 1e-8\nmax_contributions = 3\n\
         bounds = {{ \"ehr.diabetes\" = [0.0, 1.0] }}\n\
         domains = {{ \"activity.steps_band\" = [\"low\", \"mid\", \"high\"] }}\n"
    ))
    .unwrap();
    let dp = c.privacy.dp.unwrap();
    assert_eq!(dp.split, BudgetSplit::PerReceiver);
    assert_eq!(dp.max_contributions, 3);
    assert_eq!(dp.bounds_of("ehr", "diabetes"), Some([0.0, 1.0]));
    assert_eq!(
        dp.domain_of("activity", "steps_band").unwrap()[2],
        DomainValue::Text("high".into())
    );
    assert_eq!(
        contract(BASE)
            .unwrap()
            .privacy
            .dp
            .unwrap()
            .max_contributions,
        1
    );
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let cases = [
        ("epsilon = 0.0\nquery_epsilon = 0.1\n", "epsilon must be"),
        (
            "epsilon = 1.0\nquery_epsilon = 2.0\n",
            "query_epsilon must be",
        ),
        (&format!("{BASE}delta = 1.5\n"), "delta must be in [0, 1)"),
        (&format!("{BASE}delta = 1e-6\n"), "query_delta is 0"),
        (
            &format!("{BASE}query_delta = 1e-6\n"),
            "query_delta must be in",
        ),
        (
            &format!("{BASE}max_contributions = 0\n"),
            "max_contributions",
        ),
        (
            &format!("{BASE}bounds = {{ \"ehr.age_band\" = [0.0, 1.0] }}\n"),
            "only measures are clamped",
        ),
        (
            &format!("{BASE}bounds = {{ \"ehr.diabetes\" = [1.0, 1.0] }}\n"),
            "low < high",
        ),
        (
            &format!("{BASE}bounds = {{ \"ehr.nothing\" = [0.0, 1.0] }}\n"),
            "is not a column",
        ),
        (
            &format!("{BASE}bounds = {{ \"ehr.diabetes\" = [1e300, 2e300] }}\n"),
            "at most 1e15 from zero",
        ),
        (
            &format!("{BASE}bounds = {{ \"ehr.diabetes\" = [-1e16, 0.0] }}\n"),
            "at most 1e15 from zero",
        ),
        (
            &format!("{BASE}bounds = {{ \"ehr.diabetes\" = [0.0, 1e-12] }}\n"),
            "within 1e-9 of zero",
        ),
        (
            &format!("{BASE}domains = {{ \"ehr.patient_id\" = [\"p1\"] }}\n"),
            "only dimensions have public domains",
        ),
        (
            &format!("{BASE}domains = {{ \"ehr.age_band\" = [\"a\", \"a\"] }}\n"),
            "listed twice",
        ),
        (&format!("{BASE}split = \"per_planet\"\n"), "per_planet"),
    ];
    for (dp, expect) in cases {
        let err = contract(dp).unwrap_err().to_string();
        assert!(err.contains(expect), "{dp:?}: {err}");
    }
    // An analysis marked dp needs [privacy.dp].
    let text = crate::example::activity_and_diabetes(
        &SecretIdentity::generate().public().to_text(),
        &SecretIdentity::generate().public().to_text(),
    )
    .replace(
        "receivers = [\"hospital-a\", \"fitness-b\"]",
        "receivers = [\"hospital-a\", \"fitness-b\"]\ndp = true",
    );
    let err = Contract::parse(text.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("has no [privacy.dp]"), "{err}");
}

fn spend(epsilon: f64, delta: f64) -> Spend {
    Spend { epsilon, delta }
}

#[test]
fn spends_compose_and_the_budget_is_exact() {
    let c = contract(BASE).unwrap();
    let mut b = Budget::of(&c).unwrap();
    let both = ["hospital-a".to_string(), "fitness-b".to_string()];
    // Ten spends of 0.1 add up to exactly the total of 1.0 (no floating-point drift).
    for _ in 0..10 {
        b.charge(&both, spend(0.1, 0.0)).unwrap();
    }
    let err = b.charge(&both, spend(1e-9, 0.0)).unwrap_err();
    assert!(err.contains("would be exceeded"), "{err}");
    for a in b.accounts_report() {
        assert_eq!(a.spent_epsilon, 1.0);
        assert_eq!(a.remaining_epsilon, 0.0);
        assert_eq!(a.releases, 10);
    }
}

#[test]
fn per_receiver_budgets_are_separate_and_shared_ones_are_not() {
    let c = contract(BASE).unwrap();
    let mut b = Budget::of(&c).unwrap();
    let h = ["hospital-a".to_string()];
    let f = ["fitness-b".to_string()];
    b.charge(&h, spend(0.75, 0.0)).unwrap();
    assert!(b.check(&h, spend(0.5, 0.0)).is_err());
    b.charge(&f, spend(0.5, 0.0)).unwrap();
    // A refused charge spends nothing, for any of its receivers.
    let both = ["fitness-b".to_string(), "hospital-a".to_string()];
    assert!(b.charge(&both, spend(0.3, 0.0)).is_err());
    let report = b.accounts_report();
    assert_eq!(
        report
            .iter()
            .find(|a| a.name == "fitness-b")
            .unwrap()
            .spent_epsilon,
        0.5
    );

    let c = contract(&format!("{BASE}split = \"shared\"\n")).unwrap();
    let mut b = Budget::of(&c).unwrap();
    b.charge(&h, spend(0.75, 0.0)).unwrap();
    let err = b.charge(&f, spend(0.5, 0.0)).unwrap_err();
    assert!(err.contains(SHARED_ACCOUNT), "{err}");
}

#[test]
fn delta_is_accounted_too() {
    let c = contract(&format!("{BASE}delta = 1e-6\nquery_delta = 4e-7\n")).unwrap();
    let mut b = Budget::of(&c).unwrap();
    let h = ["hospital-a".to_string()];
    b.charge(&h, spend(0.1, 4e-7)).unwrap();
    b.charge(&h, spend(0.1, 4e-7)).unwrap();
    let err = b.charge(&h, spend(0.1, 4e-7)).unwrap_err();
    assert!(err.contains("δ"), "{err}");
    b.charge(&h, spend(0.1, 0.0)).unwrap();
}

/// The report's JSON is the shape receivers have read since DP releases began.
#[test]
fn dp_report_wire_shape() {
    let laplace = |scale: f64| ColumnNoise::DiscreteLaplace {
        epsilon: 0.5,
        scale,
        ci95: 3.0 * scale,
    };
    let report = DpReport {
        epsilon: 1.0,
        delta: 1e-6,
        max_contributions: 2,
        groups: GroupRelease::Thresholded,
        threshold: Some(17.0),
        columns: BTreeMap::from([
            ("people".to_string(), laplace(4.0)),
            (
                "mean".to_string(),
                ColumnNoise::Ratio {
                    epsilon: 1.0,
                    sum: Box::new(laplace(0.1)),
                    count: Box::new(laplace(4.0)),
                },
            ),
        ]),
        noise_sd: BTreeMap::new(),
    };
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["groups"], "thresholded");
    assert_eq!(json["columns"]["people"]["mechanism"], "discrete_laplace");
    assert_eq!(json["columns"]["people"]["scale"], 4.0);
    assert_eq!(
        json["columns"]["mean"]["mechanism"],
        "noisy sum / noisy count"
    );
    assert_eq!(
        json["columns"]["mean"]["sum"]["mechanism"],
        "discrete_laplace"
    );
    let back: DpReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
    assert_eq!(back.columns["mean"].scale(), 0.1);
}
