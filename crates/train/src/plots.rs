//! ROC curves and score histograms (PNG and SVG) for `evaluate --plots` and `plot`.
//!
//! Text (titles, axis labels, legends) is drawn with DejaVu Sans, embedded in the binary
//! (`crates/train/assets/fonts/`, license beside it) and rasterised by plotters' pure-Rust `ab_glyph` backend,
//! so the binary needs no system fonts and does not link fontconfig or freetype. The font is
//! registered under plotters' default family name, `sans-serif`, so every text style (including
//! the defaults of meshes and legends) finds it; the SVG files name that generic family and
//! viewers draw it with their own sans-serif font.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

const SIZE: (u32, u32) = (900, 650);
const FONT: &str = "sans-serif";
/// DejaVu Sans 2.37 (Bitstream Vera license; see crates/train/assets/fonts/DejaVuSans-LICENSE.txt).
static FONT_DATA: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the embedded font with plotters (once per process); text drawing fails without it.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_DATA).is_ok());
    ensure!(ok, "the embedded plot font is not a valid TrueType font");
    Ok(())
}

/// One ROC curve to draw.
#[derive(Debug, Clone)]
pub struct RocCurve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub auroc: Option<f64>,
}

/// One set of scores for a histogram.
#[derive(Debug, Clone)]
pub struct ScoreSeries {
    pub name: String,
    pub scores: Vec<f32>,
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// A plot drawable on any backend.
trait Plot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

fn render<P: Plot>(plot: &P, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    virnucpro_atomic::create_output_dir(dir)
        .with_context(|| format!("cannot create plot directory {}", dir.display()))?;
    register_font()?;
    let pid = std::process::id();

    let png = dir.join(format!("{stem}.png"));
    // The bitmap backend picks the encoder from the extension, so the temporary name ends in .png.
    let png_tmp = dir.join(format!(".{stem}.tmp-{pid}.png"));
    // Rendered to a temporary name and renamed, so a failed run leaves no half-drawn file.
    let drawn = (|| -> Result<()> {
        let root = BitMapBackend::new(&png_tmp, SIZE).into_drawing_area();
        plot.draw(&root)?;
        root.present().map_err(draw_err)?;
        Ok(())
    })();
    if let Err(e) = drawn.and_then(|_| {
        fs::rename(&png_tmp, &png).with_context(|| format!("cannot write {}", png.display()))
    }) {
        let _ = fs::remove_file(&png_tmp);
        return Err(e.context(format!("cannot draw {}", png.display())));
    }

    let svg = dir.join(format!("{stem}.svg"));
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        plot.draw(&root)
            .with_context(|| format!("cannot draw {}", svg.display()))?;
        root.present().map_err(draw_err)?;
    }
    virnucpro_atomic::write_atomic(&svg, buf.as_bytes())?;
    Ok(vec![png, svg])
}

struct RocPlot<'a> {
    title: &'a str,
    curves: &'a [RocCurve],
}

impl Plot for RocPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(root)
            .margin(20)
            .caption(self.title, (FONT, 24))
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("False positive rate")
            .y_desc("True positive rate")
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(draw_err)?;
        for (i, curve) in self.curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let series = chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?;
            let label = match curve.auroc {
                Some(a) => format!("{} (AUROC {a:.4})", curve.name),
                None => format!("{} (AUROC undefined)", curve.name),
            };
            series.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 16))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

struct HistogramPlot<'a> {
    title: &'a str,
    x_desc: &'a str,
    series: &'a [ScoreSeries],
    bins: usize,
}

impl HistogramPlot<'_> {
    /// Counts per bin over [0, 1]; a score of exactly 1 goes in the last bin.
    fn counts(&self, scores: &[f32]) -> Vec<u64> {
        let mut counts = vec![0u64; self.bins];
        for &s in scores {
            if s.is_finite() {
                let b = ((s.clamp(0.0, 1.0) as f64) * self.bins as f64) as usize;
                counts[b.min(self.bins - 1)] += 1;
            }
        }
        counts
    }
}

impl Plot for HistogramPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(draw_err)?;
        let all: Vec<Vec<u64>> = self.series.iter().map(|s| self.counts(&s.scores)).collect();
        let y_max = all.iter().flatten().copied().max().unwrap_or(0).max(1) as f64 * 1.05;
        let mut chart = ChartBuilder::on(root)
            .margin(20)
            .caption(self.title, (FONT, 24))
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, 0f64..y_max)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc("Frames")
            .y_label_formatter(&|v: &f64| format!("{v:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .disable_x_mesh()
            .draw()
            .map_err(draw_err)?;
        let width = 1.0 / self.bins as f64;
        for (i, (s, counts)) in self.series.iter().zip(&all).enumerate() {
            let color = COLORS[i % COLORS.len()];
            let fill = if self.series.len() > 1 {
                color.mix(0.5).filled()
            } else {
                color.filled()
            };
            let bars = counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(b, &c)| {
                    let x0 = b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], fill)
                });
            let series = chart.draw_series(bars).map_err(draw_err)?;
            let label = format!("{} (n = {})", s.name, s.scores.len());
            series
                .label(label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], fill));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 16))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// ROC curves of several classifiers in one plot: `<dir>/<stem>.png` and `.svg`.
pub fn write_roc(dir: &Path, stem: &str, title: &str, curves: &[RocCurve]) -> Result<Vec<PathBuf>> {
    render(&RocPlot { title, curves }, dir, stem)
}

/// Overlaid histograms of scores in [0, 1]: `<dir>/<stem>.png` and `.svg`.
pub fn write_score_histogram(
    dir: &Path,
    stem: &str,
    title: &str,
    x_desc: &str,
    series: &[ScoreSeries],
    bins: usize,
) -> Result<Vec<PathBuf>> {
    ensure!(bins > 0, "a histogram needs at least one bin");
    render(
        &HistogramPlot {
            title,
            x_desc,
            series,
            bins,
        },
        dir,
        stem,
    )
}

/// Reads `score2` of every frame from a `prediction_results.txt` (docs/PIPELINE.md §6).
pub fn read_prediction_scores(path: &Path) -> Result<Vec<f32>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let cols: Vec<&str> = header.split('\t').collect();
    let Some(col) = cols.iter().position(|&c| c == "score2") else {
        bail!(
            "{}:1: no `score2` column in the header {header:?}; expected a \
             prediction_results.txt from `virnucpro predict` (Sequence_ID, Prediction, score1, score2)",
            path.display()
        );
    };
    let mut scores = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let field = line
            .split('\t')
            .nth(col)
            .with_context(|| format!("{}:{}: missing column {}", path.display(), i + 2, col + 1))?;
        let v: f32 = field.trim().parse().with_context(|| {
            format!(
                "{}:{}: score2 {field:?} is not a number",
                path.display(),
                i + 2
            )
        })?;
        scores.push(v);
    }
    ensure!(!scores.is_empty(), "{}: no prediction rows", path.display());
    Ok(scores)
}

/// `virnucpro plot`: the score2 distribution of a prediction run, `score_distribution.png/.svg`.
pub fn plot_predictions(results: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let scores = read_prediction_scores(results)?;
    let series = [ScoreSeries {
        name: "frames".to_string(),
        scores,
    }];
    write_score_histogram(
        out_dir,
        "score_distribution",
        "Virus score (score2) per frame",
        "score2",
        &series,
        50,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb<P: Plot>(plot: &P) -> Vec<u8> {
        register_font().unwrap();
        let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
            plot.draw(&root).unwrap();
            root.present().unwrap();
        }
        buf
    }

    fn svg<P: Plot>(plot: &P) -> String {
        register_font().unwrap();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            plot.draw(&root).unwrap();
            root.present().unwrap();
        }
        svg
    }

    fn curves() -> Vec<RocCurve> {
        vec![RocCurve {
            name: "c".into(),
            points: vec![(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)],
            auroc: Some(0.75),
        }]
    }

    /// The embedded font really draws text into the PNG: a title changes pixels in the title
    /// band at the top, and nowhere else.
    #[test]
    fn png_title_is_drawn_with_the_embedded_font() {
        let curves = curves();
        let titled = rgb(&RocPlot {
            title: "ROC curve of the test",
            curves: &curves,
        });
        let untitled = rgb(&RocPlot {
            title: "",
            curves: &curves,
        });
        let row = SIZE.0 as usize * 3;
        let rows: Vec<usize> = (0..SIZE.1 as usize)
            .filter(|&y| titled[y * row..(y + 1) * row] != untitled[y * row..(y + 1) * row])
            .collect();
        assert!(rows.len() >= 10, "the title spans rows {rows:?}");
        assert!(rows.iter().all(|&y| (15..70).contains(&y)), "rows {rows:?}");
        let dark = titled[..70 * row]
            .chunks(3)
            .zip(untitled[..70 * row].chunks(3))
            .filter(|(t, u)| t != u && t.iter().all(|&b| b < 128))
            .count();
        assert!(dark > 200, "{dark} dark title pixels");
        // The axis labels and the legend are drawn too: the plot has far more than lines.
        assert!(titled.iter().any(|&b| b != 255), "something was drawn");
    }

    /// The SVGs carry the titles, axis descriptions, tick labels and legends as text.
    #[test]
    fn svg_has_the_labels() {
        let roc = svg(&RocPlot {
            title: "ROC curve",
            curves: &curves(),
        });
        for text in [
            "ROC curve",
            "False positive rate",
            "True positive rate",
            "c (AUROC 0.7500)",
        ] {
            assert!(roc.contains(text), "{text:?} missing in\n{roc}");
        }
        assert!(
            roc.lines().any(|l| l.trim() == "0.5"),
            "no tick label in\n{roc}"
        );
        let hist = svg(&HistogramPlot {
            title: "Scores",
            x_desc: "score2",
            series: &[ScoreSeries {
                name: "a".into(),
                scores: vec![0.1, 0.5, 0.5, 1.0],
            }],
            bins: 10,
        });
        for text in ["Scores", "score2", "Frames", "a (n = 4)", "<rect"] {
            assert!(hist.contains(text), "{text:?} missing in\n{hist}");
        }
    }

    #[test]
    fn reads_prediction_scores_with_line_numbers_in_errors() {
        let dir = std::env::temp_dir().join(format!("vnp-pred-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("prediction_results.txt");
        fs::write(
            &p,
            "Sequence_ID\tPrediction\tscore1\tscore2\na_chunk_1F1\tvirus\t0.25\t0.75\n",
        )
        .unwrap();
        assert_eq!(read_prediction_scores(&p).unwrap(), vec![0.75]);
        fs::write(
            &p,
            "Sequence_ID\tPrediction\tscore1\tscore2\na\tvirus\t0.25\tx\n",
        )
        .unwrap();
        let err = format!("{:#}", read_prediction_scores(&p).unwrap_err());
        assert!(err.contains("prediction_results.txt:2"), "{err}");
        fs::write(&p, "id\tscore\n").unwrap();
        let err = format!("{:#}", read_prediction_scores(&p).unwrap_err());
        assert!(err.contains("no `score2` column"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
