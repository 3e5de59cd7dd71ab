//! Binary classification metrics for `train` and `evaluate`: label 1 = viral is the positive
//! class; a frame is predicted viral when score2 > score1 (docs/PIPELINE.md §5, a tie is
//! "others").

use serde::Serialize;

/// Confusion matrix counts, positive = viral.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

fn ratio(num: u64, den: u64) -> f64 {
    // sklearn's zero_division=0 convention: an undefined ratio counts as 0.
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Confusion {
    /// `labels` and `predicted` are 0/1 per row.
    pub fn from_predictions(labels: &[u8], predicted: &[u8]) -> Self {
        assert_eq!(labels.len(), predicted.len(), "one prediction per label");
        let mut c = Confusion::default();
        for (&y, &p) in labels.iter().zip(predicted) {
            match (y != 0, p != 0) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        // 2TP / (2TP + FP + FN) equals 2PR/(P+R) and stays defined when P or R is undefined.
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

/// The metrics reported per classifier and per training epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    pub n: u64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// `None` when only one class is present (AUROC is undefined).
    pub auroc: Option<f64>,
    pub confusion: Confusion,
}

/// Predicted label per row: viral (1) when score2 > score1.
pub fn predict_labels(probs: &[[f32; 2]]) -> Vec<u8> {
    probs.iter().map(|p| u8::from(p[1] > p[0])).collect()
}

/// All metrics from true labels and the classifier's softmax output (score1, score2).
pub fn binary_metrics(labels: &[u8], probs: &[[f32; 2]]) -> Metrics {
    let predicted = predict_labels(probs);
    let confusion = Confusion::from_predictions(labels, &predicted);
    let scores: Vec<f32> = probs.iter().map(|p| p[1]).collect();
    Metrics {
        n: confusion.total(),
        accuracy: confusion.accuracy(),
        precision: confusion.precision(),
        recall: confusion.recall(),
        f1: confusion.f1(),
        auroc: auroc(labels, &scores),
        confusion,
    }
}

/// Area under the ROC curve as the Mann–Whitney U statistic: the probability that a random
/// positive scores above a random negative, ties counting one half (average ranks).
pub fn auroc(labels: &[u8], scores: &[f32]) -> Option<f64> {
    assert_eq!(labels.len(), scores.len(), "one score per label");
    let n_pos = labels.iter().filter(|&&l| l != 0).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        let pos_in_tie = order[i..j].iter().filter(|&&k| labels[k] != 0).count();
        rank_sum += avg_rank * pos_in_tie as f64;
        i = j;
    }
    let u = rank_sum - (n_pos as f64) * (n_pos as f64 + 1.0) / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// ROC curve points (false positive rate, true positive rate) from (0,0) to (1,1), one point per
/// distinct score threshold (predict positive when score >= threshold).
pub fn roc_curve(labels: &[u8], scores: &[f32]) -> Vec<(f64, f64)> {
    let n_pos = labels.iter().filter(|&&l| l != 0).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if labels[order[j]] != 0 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        let fpr = if n_neg > 0.0 { fp / n_neg } else { 0.0 };
        let tpr = if n_pos > 0.0 { tp / n_pos } else { 0.0 };
        points.push((fpr, tpr));
        i = j;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_perfect_inverse_and_ties() {
        assert_eq!(auroc(&[0, 0, 1, 1], &[0.1, 0.2, 0.8, 0.9]), Some(1.0));
        assert_eq!(auroc(&[0, 0, 1, 1], &[0.9, 0.8, 0.2, 0.1]), Some(0.0));
        assert_eq!(auroc(&[0, 1], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auroc(&[1, 1], &[0.5, 0.4]), None);
    }

    #[test]
    fn roc_ends_at_one_one() {
        let pts = roc_curve(&[0, 1, 1, 0], &[0.3, 0.6, 0.6, 0.9]);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
    }
}
