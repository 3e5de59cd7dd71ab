//! `virnucpro prepare` on small GenBank files built here, with hand-checked expectations.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use predicates::prelude::*;

use crate::util::{vnp, CODE};

/// A CDS feature: location text and its /translation (None: the qualifier is absent).
struct Cds<'a>(&'a str, Option<&'a str>);

/// One GenBank record in NCBI layout (lower-case ORIGIN, 60 bases per line).
fn record(id: &str, seq: &str, cds: &[Cds]) -> String {
    let mut s = format!(
        "LOCUS       {id:<16} {:>11} bp    DNA     linear   VRL 01-JAN-2000\n\
         DEFINITION  synthetic record {id}.\n\
         ACCESSION   {id}\n\
         VERSION     {id}.1\n\
         KEYWORDS    .\n\
         SOURCE      synthetic\n  ORGANISM  synthetic\n            Unclassified.\n\
         FEATURES             Location/Qualifiers\n\
         \x20    source          1..{}\n\
         \x20                    /organism=\"synthetic\"\n",
        seq.len(),
        seq.len()
    );
    for Cds(loc, tr) in cds {
        s += &format!("     CDS             {loc}\n");
        s += "                     /codon_start=1\n";
        if let Some(t) = tr {
            s += &format!("                     /translation=\"{t}\"\n");
        } else {
            s += "                     /pseudo\n";
        }
    }
    s += "ORIGIN      \n";
    let lower = seq.to_ascii_lowercase();
    for (i, line) in lower.as_bytes().chunks(60).enumerate() {
        let groups: Vec<&str> = line
            .chunks(10)
            .map(|g| std::str::from_utf8(g).unwrap())
            .collect();
        s += &format!("{:>9} {}\n", i * 60 + 1, groups.join(" "));
    }
    s += "//\n";
    s
}

fn gzip(path: &Path, text: &str) {
    let f = fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

// Chunk (30 bp) whose frames are, by hand (standard code):
//   F1 ATG GCT AAA GAA TTC GGT CAT TGG CCA GAC = MAKEFGHWPD      (open)
//   F2 TGG CTA AAG AAT TCG GTC ATT GGC CAG     = WLKNSVIGQ       (open)
//   F3 GGC TAA ...                             = G*...           (stop)
//   R1 GTC TGG CCA ATG ACC GAA TTC TTT AGC CAT = VWPMTEFFSH      (open)
//   R2 TCT GGC CAA TGA ...                     = SGQ*...         (stop)
//   R3 CTG GCC AAT GAC CGA ATT CTT TAG ...     = LANDRIL*...     (stop)
const CHUNK: &str = "ATGGCTAAAGAATTCGGTCATTGGCCAGAC";
// The same chunk with an N in its last codon: F1 would still be MAKEFGHWP (the ambiguous codon
// is dropped), a substring of the CDS, so only the ambiguity rule keeps it out.
const CHUNK_N: &str = "ATGGCTAAAGAATTCGGTCATTGGCCAGAN";

fn write_small_set(dir: &Path) -> (PathBuf, PathBuf) {
    let viral = dir.join("viral.gbff");
    let text = record(
        "V1",
        &format!("{CHUNK}{CHUNK_N}"),
        &[
            Cds("1..60", Some("MAKEFGHWPDMAKEFGHWPX")),
            Cds("complement(1..30)", Some("MVWPMTEFFSHK")),
        ],
    ) + &record(
        "V2",
        CHUNK,
        &[Cds("1..30", None), Cds("2..28", Some("AWLKNSVIGQA"))],
    ) + &record("V3", CHUNK, &[]);
    fs::write(&viral, text).unwrap();
    let host = dir.join("host.gbff.gz");
    gzip(
        &host,
        &record(
            "HOST1",
            CHUNK,
            &[
                Cds("1..30", Some("MAKEFGHWPD")),
                Cds("2..28", Some("WLKNSVIGQ")),
                Cds("complement(1..30)", Some("VWPMTEFFSH")),
            ],
        ),
    );
    (viral, host)
}

#[test]
fn prepare_keeps_exactly_the_hand_checked_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let (viral, host) = write_small_set(tmp.path());
    let out = tmp.path().join("out");
    let assert = vnp()
        .args(["prepare", "--chunk-len", "30", "--viral"])
        .arg(&viral)
        .arg("--host")
        .arg(&host)
        .arg("--out-dir")
        .arg(&out)
        .assert()
        .success();
    let stdout = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(stdout.contains("viral"), "{stdout}");
    assert!(
        stdout.contains("3 viral + 3 host frames written"),
        "{stdout}"
    );
    // Nothing lost silently: the record without CDS and the CDS without /translation are named.
    assert!(
        stderr.contains("record V3.1 has no CDS feature"),
        "{stderr}"
    );
    assert!(
        stderr.contains("record V2.1") && stderr.contains("CDS 1..30 has no /translation"),
        "{stderr}"
    );

    let frames = fs::read_to_string(out.join("frames.tsv")).unwrap();
    let expected = "\
id\tlabel\tgroup\tdna\tprotein
V1.1_chunk_1F1\t1\tviral\tATGGCTAAAGAATTCGGTCATTGGCCAGAC\tMAKEFGHWPD
V1.1_chunk_1R1\t1\tviral\tGTCTGGCCAATGACCGAATTCTTTAGCCAT\tVWPMTEFFSH
V2.1_chunk_1F2\t1\tviral\tTGGCTAAAGAATTCGGTCATTGGCCAGA\tWLKNSVIGQ
HOST1.1_chunk_1F1\t0\thost\tATGGCTAAAGAATTCGGTCATTGGCCAGAC\tMAKEFGHWPD
HOST1.1_chunk_1F2\t0\thost\tTGGCTAAAGAATTCGGTCATTGGCCAGA\tWLKNSVIGQ
HOST1.1_chunk_1R1\t0\thost\tGTCTGGCCAATGACCGAATTCTTTAGCCAT\tVWPMTEFFSH
";
    assert_eq!(frames, expected);
    // The reader `extract` uses sees the same rows.
    let rows: Vec<_> = virnucpro_train::prepare::FramesReader::open(&out.join("frames.tsv"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[1].id, "V1.1_chunk_1R1");
    assert_eq!((rows[1].label, rows[1].group.as_str()), (1, "viral"));
    assert_eq!(rows[5].protein, "VWPMTEFFSH");

    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let v = &summary["groups"][0];
    assert_eq!(v["group"], "viral");
    assert_eq!(v["records"], 3);
    assert_eq!(v["records_without_cds"], 1);
    assert_eq!(v["cds"], 4);
    assert_eq!(v["cds_without_translation"], 1);
    assert_eq!(v["chunks"], 3);
    assert_eq!(v["chunks_ambiguous"], 1);
    assert_eq!(v["frames_open"], 6);
    assert_eq!(v["frames_in_cds"], 3);
    assert_eq!(v["frames_written"], 3);
    let h = &summary["groups"][1];
    assert_eq!(h["group"], "host");
    assert_eq!(h["frames_in_cds"], 3);
    assert_eq!(summary["viral_frames"], 3);
    assert_eq!(summary["host_frames_written"], 3);
    assert_eq!(summary["balanced"], true);
    assert_eq!(summary["chunk_len"], 30);
    // Only the two outputs: no temporary or spill file is left behind.
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["frames.tsv", "summary.json"]);
}

// ---- balancing ----------------------------------------------------------------------------

/// A deterministic stop-free ORF of `codons` codons and its translation.
fn orf(codons: usize, seed: &mut u64) -> (String, String) {
    let bases = b"TCAG";
    let (mut dna, mut protein) = (String::new(), String::new());
    while protein.len() < codons {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (*seed >> 33) as usize % 64;
        if CODE[i] == b'*' {
            continue;
        }
        for k in [i / 16, (i / 4) % 4, i % 4] {
            dna.push(bases[k] as char);
        }
        protein.push(CODE[i] as char);
    }
    (dna, protein)
}

/// A GenBank file of `records` records, each one ORF of `chunks` 30-bp chunks whose CDS covers it:
/// every chunk's F1 is in the CDS, so the file yields at least `records * chunks` frames.
fn orf_file(path: &Path, prefix: &str, records: usize, chunks: usize, seed: &mut u64) {
    let mut text = String::new();
    for r in 0..records {
        let (dna, protein) = orf(chunks * 10, seed);
        text += &record(
            &format!("{prefix}{r}"),
            &dna,
            &[Cds(&format!("1..{}", dna.len()), Some(&protein))],
        );
    }
    fs::write(path, text).unwrap();
}

fn count_groups(frames: &str) -> std::collections::BTreeMap<(String, String), usize> {
    let mut m = std::collections::BTreeMap::new();
    for line in frames.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        *m.entry((cols[1].to_string(), cols[2].to_string()))
            .or_default() += 1;
    }
    m
}

#[test]
fn host_frames_are_sampled_in_proportion_to_group_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seed = 17;
    let dir = tmp.path();
    orf_file(&dir.join("v.gbff"), "VIR", 4, 5, &mut seed);
    orf_file(&dir.join("b1.gbff"), "BAC", 6, 10, &mut seed);
    orf_file(&dir.join("b2.gbff"), "BACB", 6, 10, &mut seed);
    orf_file(&dir.join("f.gbff"), "FUN", 4, 10, &mut seed);
    let run = |out: &str, seed: &str| {
        let out = dir.join(out);
        vnp()
            .current_dir(dir)
            .args([
                "prepare",
                "--chunk-len",
                "30",
                "--seed",
                seed,
                "--viral",
                "v.gbff",
            ])
            .args(["--host", "bacteria=b1.gbff", "bacteria=b2.gbff", "f.gbff"])
            .arg("--out-dir")
            .arg(&out)
            .assert()
            .success();
        let frames = fs::read_to_string(out.join("frames.tsv")).unwrap();
        let summary: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        (frames, summary)
    };
    let (frames, summary) = run("a", "1");
    let groups = summary["groups"].as_array().unwrap();
    let get = |name: &str, key: &str| -> u64 {
        groups.iter().find(|g| g["group"] == name).unwrap()[key]
            .as_u64()
            .unwrap()
    };
    let viral = get("v", "frames_in_cds");
    let bacteria = get("bacteria", "frames_in_cds");
    let fungi = get("f", "frames_in_cds");
    assert!(viral >= 20 && bacteria >= 120 && fungi >= 40, "{summary:#}");
    // Largest-remainder split of `viral` over the host groups by size.
    let total = bacteria + fungi;
    let mut want_b = viral * bacteria / total;
    let mut want_f = viral * fungi / total;
    if want_b + want_f < viral {
        if (viral * bacteria) % total >= (viral * fungi) % total {
            want_b += 1;
        } else {
            want_f += 1;
        }
    }
    let counts = count_groups(&frames);
    assert_eq!(counts[&("1".into(), "v".into())] as u64, viral);
    assert_eq!(counts[&("0".into(), "bacteria".into())] as u64, want_b);
    assert_eq!(counts[&("0".into(), "f".into())] as u64, want_f);
    assert_eq!(want_b + want_f, viral, "host total equals viral total");
    assert_eq!(get("bacteria", "frames_written"), want_b);
    assert_eq!(summary["balanced"], true);
    // Host IDs are unique and come from the right files.
    let host_ids: Vec<&str> = frames
        .lines()
        .filter(|l| l.split('\t').nth(1) == Some("0"))
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let unique: std::collections::HashSet<_> = host_ids.iter().collect();
    assert_eq!(unique.len(), host_ids.len());

    // Same seed, same sample; another seed, another sample of the same sizes.
    let (again, _) = run("b", "1");
    assert_eq!(frames, again);
    let (other, _) = run("c", "2");
    assert_ne!(frames, other);
    assert_eq!(count_groups(&other), counts);
}

// ---- bad input ------------------------------------------------------------------------------

fn prepare_err(dir: &Path, viral_text: &str) -> String {
    prepare_err_with(dir, viral_text, &[])
}

fn prepare_err_with(dir: &Path, viral_text: &str, extra: &[&str]) -> String {
    let viral = dir.join("bad.gbff");
    fs::write(&viral, viral_text).unwrap();
    let host = dir.join("host.gbff");
    fs::write(
        &host,
        record("H", CHUNK, &[Cds("1..30", Some("MAKEFGHWPD"))]),
    )
    .unwrap();
    let out = vnp()
        .args(["prepare", "--chunk-len", "30", "--viral"])
        .arg(&viral)
        .arg("--host")
        .arg(&host)
        .arg("--out-dir")
        .arg(dir.join("out"))
        .args(extra)
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn malformed_genbank_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = record("OK1", CHUNK, &[Cds("1..30", Some("MAKEFGHWPD"))]);

    // A character that is not a base in the ORIGIN block of the second record.
    let bad = record("BAD", CHUNK, &[Cds("1..30", Some("MAKEFGHWPD"))])
        .replace("atggctaaag", "atggc@aaag");
    let err = prepare_err_with(tmp.path(), &(good.clone() + &bad), &["--strict"]);
    let locus_line = good.lines().count() + 1;
    assert!(err.contains("bad.gbff"), "{err}");
    assert!(err.contains("GenBank record #2"), "{err}");
    assert!(err.contains("rejected by the parser"), "{err}");
    assert!(
        err.contains(&format!("LOCUS at line {locus_line}")),
        "{err}"
    );

    // A truncated file: the last record has no `//`.
    let truncated = good.clone() + good.trim_end_matches("//\n");
    let err = prepare_err(tmp.path(), &truncated);
    assert!(
        err.contains(&format!(
            "record at line {locus_line} has no `//` terminator"
        )),
        "{err}"
    );
    assert!(err.contains("truncated"), "{err}");

    // Not GenBank at all.
    let err = prepare_err(tmp.path(), ">seq1\nACGT\n");
    assert!(err.contains("bad.gbff"), "{err}");
    assert!(err.contains("GenBank"), "{err}");
    // No partial output after a failure.
    assert!(!tmp.path().join("out/frames.tsv").exists());
}

/// A master record of an NCBI WGS/TSA/TLS project as NCBI writes them (cf. Biopython's
/// `tsa_acropora.gb`, `tls_KDHP01000000.gb`): no sequence, and after the features a `TLS` line
/// with the range of the project's records, which the GenBank parser (gb-io) rejects.
const MASTER_RECORD: &str = "\
LOCUS       XXXX01000000              10 rc    DNA     linear   ENV 01-JAN-2000
DEFINITION  TLS: synthetic targeted locus study master record.
ACCESSION   XXXX00000000
VERSION     XXXX00000000.1
KEYWORDS    TLS; Targeted Locus Study.
SOURCE      synthetic
  ORGANISM  synthetic
            Unclassified.
FEATURES             Location/Qualifiers
     source          1..10
                     /organism=\"synthetic\"
TLS         XXXX01000001-XXXX01000010
//
";

/// One rejected record among good ones: skipped with a warning that names the file, the record
/// number and the line, counted in summary.json; the records after it are read. `--strict` stops
/// at it instead.
#[test]
fn a_record_the_parser_rejects_is_skipped_and_counted_unless_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let first = record("G1", CHUNK, &[Cds("1..30", Some("MAKEFGHWPD"))]);
    let last = record("G2", CHUNK, &[Cds("1..30", Some("MAKEFGHWPD"))]);
    let viral = tmp.path().join("mixed.gbff");
    fs::write(&viral, format!("{first}{MASTER_RECORD}{last}")).unwrap();
    let host = tmp.path().join("host.gbff");
    fs::write(
        &host,
        record("H", CHUNK, &[Cds("1..30", Some("MAKEFGHWPD"))]),
    )
    .unwrap();
    let cmd = |out: &str| {
        let mut c = vnp();
        c.args(["prepare", "--chunk-len", "30", "--viral"])
            .arg(&viral)
            .arg("--host")
            .arg(&host)
            .arg("--out-dir")
            .arg(tmp.path().join(out));
        c
    };
    let master_line = first.lines().count() + 1;
    let tls_line = master_line + MASTER_RECORD.lines().count() - 2;

    let assert = cmd("lenient").assert().success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains(&format!(
            "mixed.gbff:{tls_line}: GenBank record #2 (LOCUS at line {master_line})"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("TLS") && stderr.contains("skipped"),
        "{stderr}"
    );
    let frames = fs::read_to_string(tmp.path().join("lenient/frames.tsv")).unwrap();
    assert!(
        frames.contains("G1.1_chunk_1F1") && frames.contains("G2.1_chunk_1F1"),
        "{frames}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("lenient/summary.json")).unwrap())
            .unwrap();
    let viral_group = &summary["groups"][0];
    assert_eq!(viral_group["group"], "mixed");
    assert_eq!(viral_group["records"], 2);
    assert_eq!(viral_group["records_rejected"], 1);
    assert_eq!(summary["groups"][1]["records_rejected"], 0);

    let assert = cmd("strict").arg("--strict").assert().failure();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("--strict")
            && stderr.contains("mixed.gbff")
            && stderr.contains("record #2"),
        "{stderr}"
    );
    assert!(!tmp.path().join("strict/frames.tsv").exists());
}

#[test]
fn missing_input_and_no_viral_frames_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    vnp()
        .args([
            "prepare",
            "--chunk-len",
            "30",
            "--viral",
            "nope.gbff",
            "--host",
            "nope2.gbff",
        ])
        .arg("--out-dir")
        .arg(tmp.path().join("o"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("nope.gbff does not exist"));
    // Only records without CDS: a clear error, not an empty data set.
    let err = prepare_err(tmp.path(), &record("NOCDS", CHUNK, &[]));
    assert!(err.contains("no viral frame was kept"), "{err}");
    assert!(
        err.contains("no_cds"),
        "the counts come with the error: {err}"
    );
}
