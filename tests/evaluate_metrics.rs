//! Metrics against hand-computed values and brute force; `virnucpro plot`.

use std::fs;

use predicates::prelude::*;
use proptest::prelude::*;
use virnucpro_train::metrics::{auroc, binary_metrics, roc_curve, Confusion};

use crate::util::vnp;

#[test]
fn metrics_of_a_fixed_confusion_matrix() {
    // 4 viral called viral, 1 viral called others, 2 host called viral, 3 host called others.
    let labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    let probs = [
        [0.1, 0.9],
        [0.2, 0.8],
        [0.3, 0.7],
        [0.4, 0.6],
        [0.5, 0.5], // a tie is "others" (PIPELINE.md §5)
        [0.35, 0.65],
        [0.45, 0.55],
        [0.6, 0.4],
        [0.8, 0.2],
        [0.9, 0.1],
    ];
    let m = binary_metrics(&labels, &probs);
    assert_eq!(
        m.confusion,
        Confusion {
            tp: 4,
            fn_: 1,
            fp: 2,
            tn: 3
        }
    );
    assert_eq!(m.n, 10);
    assert!((m.accuracy - 0.7).abs() < 1e-12);
    assert!((m.precision - 4.0 / 6.0).abs() < 1e-12);
    assert!((m.recall - 0.8).abs() < 1e-12);
    // F1 = 2PR / (P + R) = 2 * (2/3) * 0.8 / (2/3 + 0.8) = 8/11.
    assert!((m.f1 - 8.0 / 11.0).abs() < 1e-12);
    // AUROC by hand: 25 viral-host pairs; the viral 0.5 loses to host 0.65 and 0.55, the viral 0.6
    // loses to 0.65: 3 losses -> 22/25.
    assert!((m.auroc.unwrap() - 22.0 / 25.0).abs() < 1e-12);
}

#[test]
fn undefined_ratios_are_zero_and_auroc_needs_both_classes() {
    let m = binary_metrics(&[0, 0], &[[0.9, 0.1], [0.8, 0.2]]);
    assert_eq!((m.precision, m.recall, m.f1), (0.0, 0.0, 0.0));
    assert_eq!(m.accuracy, 1.0);
    assert_eq!(m.auroc, None);
}

/// P(score of a random positive > score of a random negative) + 0.5 P(tie), pair by pair.
fn brute_force_auroc(labels: &[u8], scores: &[f32]) -> Option<f64> {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &li) in labels.iter().enumerate() {
        for (j, &lj) in labels.iter().enumerate() {
            if li == 1 && lj == 0 {
                pairs += 1.0;
                if scores[i] > scores[j] {
                    wins += 1.0;
                } else if scores[i] == scores[j] {
                    wins += 0.5;
                }
            }
        }
    }
    (pairs > 0.0).then(|| wins / pairs)
}

/// Trapezoidal area under the ROC points.
fn trapezoid(points: &[(f64, f64)]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

proptest! {
    // Scores from a few levels, so ties are common.
    #[test]
    fn auroc_equals_pairwise_count(rows in prop::collection::vec((0u8..2, 0u8..6), 0..60)) {
        let labels: Vec<u8> = rows.iter().map(|r| r.0).collect();
        let scores: Vec<f32> = rows.iter().map(|r| r.1 as f32 / 5.0).collect();
        let want = brute_force_auroc(&labels, &scores);
        let got = auroc(&labels, &scores);
        match (got, want) {
            (Some(g), Some(w)) => {
                prop_assert!((g - w).abs() < 1e-12, "{} vs {}", g, w);
                // The ROC curve's area (ties as diagonal segments) is the same number.
                prop_assert!((trapezoid(&roc_curve(&labels, &scores)) - w).abs() < 1e-9);
            }
            (None, None) => {}
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn auroc_continuous_scores(rows in prop::collection::vec((0u8..2, 0f32..1.0), 2..200)) {
        let labels: Vec<u8> = rows.iter().map(|r| r.0).collect();
        let scores: Vec<f32> = rows.iter().map(|r| r.1).collect();
        let want = brute_force_auroc(&labels, &scores);
        let got = auroc(&labels, &scores);
        prop_assert_eq!(got.is_some(), want.is_some());
        if let (Some(g), Some(w)) = (got, want) {
            prop_assert!((g - w).abs() < 1e-12);
        }
    }
}

#[test]
fn plot_draws_the_score_distribution_of_a_prediction_run() {
    let tmp = tempfile::tempdir().unwrap();
    let results = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/oracle/e2e_fastesm/prediction_results.txt"
    );
    vnp()
        .args(["plot", results, "--out"])
        .arg(tmp.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("score_distribution.png"));
    let png = fs::read(tmp.path().join("score_distribution.png")).unwrap();
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let svg = fs::read_to_string(tmp.path().join("score_distribution.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("<rect"));
    for label in ["Virus score (score2) per frame", "Frames", "frames (n = "] {
        assert!(svg.contains(label), "the SVG has the label {label:?}");
    }

    fs::write(tmp.path().join("bad.txt"), "hello\n").unwrap();
    vnp()
        .arg("plot")
        .arg(tmp.path().join("bad.txt"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("bad.txt:1").and(predicate::str::contains("score2")));
}
