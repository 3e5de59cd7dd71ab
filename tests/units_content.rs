//! Work units are cut from the records' content: the same records give the same units, and so
//! the same output bytes, whether the FASTA is wrapped at 60 or 80 columns or gzip-compressed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::util::{output_files, BIN};
const O: &str = "tests/data/oracle";

/// Seeded records of 30 to 250 bases (some lower case, some N), short enough that a unit holds
/// several of them: `(id, sequence)`.
fn records(count: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|i| {
            let len = 30 + (next() % 221) as usize;
            let seq = (0..len)
                .map(|j| b"ACGTacgtN"[(next() % if j % 40 == 0 { 9 } else { 4 }) as usize])
                .collect();
            (format!("r{i}"), seq)
        })
        .collect()
}

/// The records as FASTA with sequence lines of at most `width` letters.
fn fasta(records: &[(String, Vec<u8>)], width: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for (id, seq) in records {
        writeln!(text, ">{id} test record").unwrap();
        for line in seq.chunks(width) {
            text.extend_from_slice(line);
            text.push(b'\n');
        }
    }
    text
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `predict --device cpu` on the tiny oracle models with every optional file on; the files of
/// the output directory with their bytes.
fn predict(input: &Path, out: &Path) -> BTreeMap<String, Vec<u8>> {
    let output = Command::new(BIN)
        .arg("predict")
        .arg(input)
        .args(["--chunk-len", "60", "--device", "cpu"])
        .args(["--dnabert", &format!("{O}/dnabert")])
        .args(["--esm", &format!("{O}/fastesm")])
        .args(["--classifier", &format!("{O}/classifier/model_full.pth")])
        .args(["--keep-frames", "--write-viral-fasta", "--out-dir"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "predict {} failed:\n{}",
        input.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output_files(out)
}

#[test]
fn wrapping_and_compression_do_not_change_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let records = records(600, 5);
    let at60 = fasta(&records, 60);
    let inputs = [
        ("wrapped60.fa", at60.clone()),
        ("wrapped80.fa", fasta(&records, 80)),
        ("wrapped60.fa.gz", gzip(&at60)),
    ];
    let mut runs = Vec::new();
    for (name, bytes) in &inputs {
        let path = tmp.path().join(name);
        fs::write(&path, bytes).unwrap();
        runs.push((
            name,
            predict(&path, &tmp.path().join(format!("out-{name}"))),
        ));
    }
    let (first, want) = &runs[0];
    assert_eq!(want.len(), 6, "{:?}", want.keys());
    for (name, got) in &runs[1..] {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (file, bytes) in got {
            assert!(
                bytes == &want[file],
                "{file} differs between {first} and {name}: the same records were cut into \
                 other work units"
            );
        }
    }
}
