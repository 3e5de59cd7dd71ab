//! `virnucpro frames` end to end: the oracle, hand-checked cases, every input form, bad inputs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

use crate::util::{entries, write, BIN};

const GENOMES: &str = "tests/data/oracle/inputs/genomes.fa";
const ORACLE_NUC: &str = "tests/data/oracle/e2e_fastesm/identified_nucleotide.fa";
const ORACLE_PROT: &str = "tests/data/oracle/e2e_fastesm/identified_protein.faa";
const NUC: &str = "identified_nucleotide.fa";
const PROT: &str = "identified_protein.faa";

fn frames(inputs: &[&Path], chunk_len: usize, out: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("frames")
        .args(inputs)
        .args(["--chunk-len", &chunk_len.to_string(), "--out-dir"])
        .arg(out);
    cmd
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.as_ref().display()))
}

fn assert_matches_oracle(out: &Path) {
    assert_eq!(
        read(out.join(NUC)),
        read(ORACLE_NUC),
        "nucleotide file differs from the oracle"
    );
    assert_eq!(
        read(out.join(PROT)),
        read(ORACLE_PROT),
        "protein file differs from the oracle"
    );
    assert_eq!(entries(out), [NUC, PROT]);
}

/// Interleaves the two output files as `id\tdna\tprotein` lines, for readable expectations.
fn table(out: &Path) -> String {
    let nuc = read(out.join(NUC));
    let prot = read(out.join(PROT));
    let nuc: Vec<&str> = nuc.lines().collect();
    let prot: Vec<&str> = prot.lines().collect();
    assert_eq!(nuc.len(), prot.len());
    let mut rows = String::new();
    for (n, p) in nuc.chunks(2).zip(prot.chunks(2)) {
        assert_eq!(n[0], p[0], "headers of the two files differ");
        rows += &format!("{}\t{}\t{}\n", &n[0][1..], n[1], p[1]);
    }
    rows
}

#[test]
fn oracle_genomes_are_byte_identical() {
    let out = tempfile::tempdir().unwrap();
    frames(&[Path::new(GENOMES)], 60, out.path())
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "7 records (892 bases), 18 chunks, 55 frames kept, 0 records with no kept frame",
        ));
    assert_matches_oracle(out.path());
}

#[test]
fn compressed_inputs_match_the_oracle() {
    for ext in ["gz", "bz2", "xz", "zst"] {
        let out = tempfile::tempdir().unwrap();
        // The fixtures carry no hint in their names: compression is detected from content.
        let src = PathBuf::from(format!("tests/data/input/genomes.fa.{ext}"));
        let renamed = out.path().join("genomes.data");
        fs::copy(&src, &renamed).unwrap();
        let dir = out.path().join("o");
        frames(&[&renamed], 60, &dir).assert().success();
        assert_matches_oracle(&dir);
    }
}

#[test]
fn gzip_written_here_and_multi_member() {
    let tmp = tempfile::tempdir().unwrap();
    let text = read(GENOMES);
    let (first, second) = text.split_at(text.find(">g_long").unwrap());
    // Two gzip members back to back (as `cat a.gz b.gz`), a valid gzip file.
    let mut bytes = Vec::new();
    for part in [first, second] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(part.as_bytes()).unwrap();
        bytes.extend(enc.finish().unwrap());
    }
    let input = write(tmp.path(), "in.fa.gz", bytes);
    let out = tmp.path().join("out");
    frames(&[&input], 60, &out).assert().success();
    assert_matches_oracle(&out);
}

#[test]
fn stdin_and_several_inputs_keep_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let text = read(GENOMES);
    let a = text.find(">g_short").unwrap();
    let b = text.find(">g_lower").unwrap();
    let first = write(tmp.path(), "a.fa", &text[..a]);
    let third = write(tmp.path(), "c.fa", &text[b..]);
    let out = tmp.path().join("out");
    frames(&[&first, Path::new("-"), &third], 60, &out)
        .write_stdin(&text[a..b])
        .assert()
        .success();
    assert_matches_oracle(&out);

    let out = tmp.path().join("out2");
    frames(&[Path::new("-")], 60, &out)
        .write_stdin(text)
        .assert()
        .success();
    assert_matches_oracle(&out);
}

#[test]
fn crlf_lower_case_rewrapped_and_spaced_input_gives_the_same_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let mut messy = String::new();
    for record in read(GENOMES).split('>').skip(1) {
        let (header, seq) = record.split_once('\n').unwrap();
        let seq: String = seq
            .split_whitespace()
            .collect::<String>()
            .to_ascii_lowercase();
        messy += &format!(">{header}\r\n");
        for (i, line) in seq.as_bytes().chunks(13).enumerate() {
            let line = std::str::from_utf8(line).unwrap();
            // A space inside some lines: removed like line breaks.
            let line = if i % 3 == 0 && line.len() > 4 {
                format!("{} {}", &line[..4], &line[4..])
            } else {
                line.to_owned()
            };
            messy += &format!("{line}\r\n");
        }
    }
    let input = write(tmp.path(), "messy.fa", messy);
    let out = tmp.path().join("out");
    frames(&[&input], 60, &out).assert().success();
    // The emitted DNA is upper-cased, as in the oracle's g_lower record.
    assert_matches_oracle(&out);
}

/// Hand-checked at L = 6:
/// - `exact` (12 bases = 2 chunks, no overlap): chunk 1 `ATGAAA` F1 = ATG AAA -> MK, DNA
///   `chunk[0:7]` clipped to `ATGAAA`; F2 = TGA stop, dropped; F3 = GAA -> E, DNA `chunk[2:6]`;
///   revcomp `TTTCAT`: R1 TTT CAT -> FH, R2 TTC -> F (`TTCA`), R3 TCA -> S (`TCAT`).
/// - `amb` (22 bases, k = 4, r = 2, shifts [1, 1, 0]: chunks at 0, 5, 10, 16): chunk 1 `ATGNNN`
///   F1 = ATG, NNN dropped -> M, DNA one base past the codon: `ATGN`.
/// - `over` (9 bases, k = 2, r = 3, lo = 1, need = 2 > k-1): the reference's shifts are [2],
///   chunk 2 starts at 4 and is clipped to 5 bases `TGGAT`; F3 = GAT -> D, DNA clipped `GAT`.
const HAND_INPUT: &str = "\
>exact two chunks of 6
ATGAAATTTGGG
>amb
ATGNNNAAARCCTTTAAGGYTT
>over L=6 gives k=2 clipped
CCCATGGAT
";

const HAND_L6: &str = "\
exact_chunk_1F1	ATGAAA	MK
exact_chunk_1F3	GAAA	E
exact_chunk_1R1	TTTCAT	FH
exact_chunk_1R2	TTCA	F
exact_chunk_1R3	TCAT	S
exact_chunk_2F1	TTTGGG	FG
exact_chunk_2F2	TTGG	L
exact_chunk_2F3	TGGG	W
exact_chunk_2R1	CCCAAA	PK
exact_chunk_2R2	CCAA	P
exact_chunk_2R3	CAAA	Q
amb_chunk_1F1	ATGN	M
amb_chunk_1R1	NNNC	H
amb_chunk_2F2	AAAR	K
amb_chunk_2R3	TTTN	F
amb_chunk_3F1	CCTTTA	PL
amb_chunk_3F2	CTTT	L
amb_chunk_3F3	TTTA	F
amb_chunk_3R2	AAAG	K
amb_chunk_3R3	AAGG	K
amb_chunk_4F1	AGGY	R
amb_chunk_4R1	AAYC	P
over_chunk_1F1	CCCATG	PM
over_chunk_1F2	CCAT	P
over_chunk_1F3	CATG	H
over_chunk_1R1	CATGGG	HG
over_chunk_1R2	ATGG	M
over_chunk_1R3	TGGG	W
over_chunk_2F1	TGGA	W
over_chunk_2F2	GGAT	G
over_chunk_2F3	GAT	D
over_chunk_2R1	ATCC	I
over_chunk_2R2	TCCA	S
over_chunk_2R3	CCA	P
";

/// At L = 9, `over` is exactly one chunk and `exact` is 2 chunks of 9 overlapping by 6
/// (k = 2, r = 6, lo = 3, need = 3 > 1: chunk 2 starts at 9 - 4 = 5, clipped to 7 bases).
const HAND_L9: &str = "\
exact_chunk_1F1	ATGAAATTT	MKF
exact_chunk_1F3	GAAATTT	EI
exact_chunk_1R1	AAATTTCAT	KFH
exact_chunk_1R2	AATTTCA	NF
exact_chunk_1R3	ATTTCAT	IS
exact_chunk_2F1	ATTTGGG	IW
exact_chunk_2F2	TTTGGG	FG
exact_chunk_2F3	TTGG	L
exact_chunk_2R1	CCCAAAT	PK
exact_chunk_2R2	CCAAAT	PN
exact_chunk_2R3	CAAA	Q
amb_chunk_1F1	ATGNNNA	MK
amb_chunk_1R1	TTTNNNC	FH
amb_chunk_2F1	AARCCTT	PL
amb_chunk_2F2	ARCC	L
amb_chunk_2F3	RCCT	F
amb_chunk_2R2	AAAG	K
amb_chunk_2R3	AAGG	K
amb_chunk_3F2	AAGG	K
amb_chunk_3F3	AGGY	R
amb_chunk_3R1	AAYC	P
amb_chunk_3R2	AYCC	L
amb_chunk_3R3	YCCT	L
over_chunk_1F1	CCCATGGAT	PMD
over_chunk_1F2	CCATGGA	PW
over_chunk_1F3	CATGGAT	HG
over_chunk_1R1	ATCCATGGG	IHG
over_chunk_1R2	TCCATGG	SM
over_chunk_1R3	CCATGGG	PW
";

#[test]
fn hand_checked_chunk_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "hand.fa", HAND_INPUT);
    for (chunk_len, expected) in [(6, HAND_L6), (9, HAND_L9)] {
        let out = tmp.path().join(format!("out{chunk_len}"));
        frames(&[&input], chunk_len, &out).assert().success();
        assert_eq!(table(&out), expected, "L = {chunk_len}");
    }
}

#[test]
fn record_shorter_than_the_chunk() {
    // One chunk, the whole 9 bases. F1 = ATG GCC TGA has a stop; F2 = TGG CCT -> WP with DNA
    // chunk[1:8]; revcomp TCAGGCCAT: R1 = TCA GGC CAT -> SGH, DNA clipped at the end.
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "s.fa", ">s\nATGGCCTGA\n");
    let out = tmp.path().join("out");
    frames(&[&input], 20, &out).assert().success();
    assert_eq!(
        table(&out),
        "s_chunk_1F2\tTGGCCTG\tWP\n\
         s_chunk_1F3\tGGCCTGA\tGL\n\
         s_chunk_1R1\tTCAGGCCAT\tSGH\n\
         s_chunk_1R2\tCAGGCCA\tQA\n\
         s_chunk_1R3\tAGGCCAT\tRP\n"
    );
}

#[test]
fn fastq_gives_the_same_frames_as_fasta() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fastq = String::new();
    for record in HAND_INPUT.split('>').skip(1) {
        let (header, seq) = record.split_once('\n').unwrap();
        let seq = seq.trim();
        fastq += &format!("@{header}\n{seq}\n+\n{}\n", "I".repeat(seq.len()));
    }
    let input = write(tmp.path(), "hand.fq", fastq);
    let out = tmp.path().join("out");
    frames(&[&input], 6, &out).assert().success();
    assert_eq!(table(&out), HAND_L6);
}

#[test]
fn empty_records_are_skipped_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "e.fa",
        ">a\nATGAAA\n>hollow desc\n>c\nTAATAATAA\n",
    );
    let out = tmp.path().join("out");
    frames(&[&input], 6, &out)
        .assert()
        .success()
        .stderr(predicate::str::contains("skipping record 'hollow'"))
        .stderr(predicate::str::contains(
            "line 3 (record 2): empty sequence",
        ))
        .stderr(predicate::str::contains("1 empty record skipped"));
    assert!(table(&out).starts_with("a_chunk_1F1\tATGAAA\tMK\n"));
}

#[test]
fn records_without_a_kept_frame_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "n.fa", ">tiny\nAC\n>ok\nATGAAA\n");
    let out = tmp.path().join("out");
    frames(&[&input], 6, &out)
        .assert()
        .success()
        .stderr(predicate::str::contains("1 record has no kept frame"))
        .stderr(predicate::str::contains("tiny"))
        .stderr(predicate::str::contains("2 records (8 bases), 2 chunks"));
}

#[test]
fn out_dir_is_created_and_old_outputs_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a/b/c");
    frames(&[Path::new(GENOMES)], 60, &out).assert().success();
    assert_matches_oracle(&out);
    fs::write(out.join(NUC), "stale").unwrap();
    frames(&[Path::new(GENOMES)], 60, &out).assert().success();
    assert_matches_oracle(&out);
}

#[test]
fn duplicate_ids_can_be_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(tmp.path(), "a.fa", ">x\nATGAAA\n");
    let b = write(tmp.path(), "b.fa", ">x\nATGAAA\n");
    let out = tmp.path().join("out");
    frames(&[&a, &b], 6, &out)
        .arg("--allow-duplicate-ids")
        .assert()
        .success();
    assert_eq!(table(&out).matches("x_chunk_1F1\t").count(), 2);
}

#[test]
fn help_shows_an_example() {
    Command::new(BIN)
        .args(["frames", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"))
        .stdout(predicate::str::contains(
            "virnucpro frames contigs.fa.gz --chunk-len 300",
        ));
}

// ---------------------------------------------------------------------------------------------
// Bad input: a clear error naming the file (and record/line), exit status 1, and the output
// directory left as it was: no new file, no temporary file, old outputs untouched.

/// Runs `frames` expecting failure; checks the exit code, that stderr contains every `needles`,
/// and that the out dir (holding old outputs) is unchanged.
fn assert_fails(inputs: &[&Path], stdin: Option<&[u8]>, code: i32, needles: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    fs::write(out.path().join(NUC), "old nucleotide\n").unwrap();
    fs::write(out.path().join(PROT), "old protein\n").unwrap();
    let mut cmd = frames(inputs, 60, out.path());
    if let Some(stdin) = stdin {
        cmd.write_stdin(stdin);
    }
    let assert = cmd.assert().failure().code(code);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
    assert!(stderr.starts_with("error: ") || code == 2, "{stderr}");
    assert_eq!(
        entries(out.path()),
        [NUC, PROT],
        "files left in the out dir"
    );
    assert_eq!(read(out.path().join(NUC)), "old nucleotide\n");
    assert_eq!(read(out.path().join(PROT)), "old protein\n");
}

#[test]
fn missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.fa");
    assert_fails(
        &[Path::new(GENOMES), &missing],
        None,
        1,
        &["cannot open input", "nope.fa", "No such file"],
    );
}

#[test]
fn not_fasta() {
    let tmp = tempfile::tempdir().unwrap();
    let text = write(tmp.path(), "notes.txt", "hello world\n");
    assert_fails(
        &[&text],
        None,
        1,
        &["notes.txt is not FASTA or FASTQ", "'h'"],
    );
    let binary = write(tmp.path(), "img.png", b"\x89PNG\r\n\x1a\n\0\0\0");
    assert_fails(&[&binary], None, 1, &["img.png is not FASTA or FASTQ"]);
    // Starts like FASTA, then binary garbage: named by record and line.
    let garbage = write(tmp.path(), "g.fa", b">r1\nACGT\n>r2 x\nAC\x00\xffGT\n");
    assert_fails(
        &[&garbage],
        None,
        1,
        &["g.fa, line 3 (record 2)", "'r2'", "0x00", "base 3"],
    );
    assert_fails(&[tmp.path()], None, 1, &["is a directory"]);
}

#[test]
fn truncated_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    // Big enough that records are read (and batches processed) before the damage shows.
    let mut text = String::new();
    let mut state = 12345u64;
    for i in 0..2000 {
        text += &format!(">r{i}\n");
        for _ in 0..1000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push(b"ACGT"[(state >> 62) as usize] as char);
        }
        text.push('\n');
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let input = write(tmp.path(), "big.fa.gz", &gz[..gz.len() * 2 / 3]);
    assert_fails(
        &[&input],
        None,
        1,
        &[
            "cannot read",
            "big.fa.gz",
            "after record 'r",
            "truncated or corrupt",
        ],
    );
}

#[test]
fn duplicate_ids_name_both_places() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(tmp.path(), "a.fa", ">x one\nATGAAA\n>y\nATG\n");
    let b = write(tmp.path(), "b.fa", ">z\nATG\n>x two\nATGAAA\n");
    assert_fails(
        &[&a, &b],
        None,
        1,
        &[
            "duplicate record ID 'x'",
            "a.fa, line 1 (record 1)",
            "b.fa, line 3 (record 2)",
            "--allow-duplicate-ids",
        ],
    );
    // Within stdin.
    assert_fails(
        &[Path::new("-")],
        Some(b">q\nAC\n>q\nGG\n"),
        1,
        &[
            "duplicate record ID 'q'",
            "<stdin>, line 1 (record 1)",
            "<stdin>, line 3 (record 2)",
        ],
    );
    assert_fails(&[&a, &a], None, 1, &["a.fa is given more than once"]);
}

#[test]
fn malformed_fastq() {
    let tmp = tempfile::tempdir().unwrap();
    let fq = write(tmp.path(), "r.fq", "@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nII\n");
    assert_fails(
        &[&fq],
        None,
        1,
        &[
            "r.fq, line 5",
            "malformed FASTQ record 'r2'",
            "quality length is 2",
        ],
    );
    let cut = write(tmp.path(), "cut.fq", "@r1\nACGT\n+\nIIII\n@r2\nAC");
    assert_fails(
        &[&cut],
        None,
        1,
        &["cut.fq", "after record 'r1'", "truncated"],
    );
}

#[test]
fn bad_arguments() {
    assert_fails(
        &[Path::new("-"), Path::new("-")],
        Some(b""),
        1,
        &["stdin (-) is given more than once"],
    );
    let out = tempfile::tempdir().unwrap();
    frames(&[Path::new(GENOMES)], 0, out.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid value '0' for '--chunk-len <N>'",
        ));
    assert!(entries(out.path()).is_empty());
    let file = out.path().join("file");
    fs::write(&file, "x").unwrap();
    frames(&[Path::new(GENOMES)], 60, &file)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot create output directory"));
}

#[cfg(unix)]
#[test]
fn interrupt_removes_temporary_files() {
    use std::process::{Command as Std, Stdio};
    use std::time::{Duration, Instant};
    for signal in ["INT", "TERM"] {
        let out = tempfile::tempdir().unwrap();
        let mut child = Std::new(BIN)
            .args(["frames", "-", "--chunk-len", "60", "--out-dir"])
            .arg(out.path())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Some input, and stdin kept open: the run waits for more with its outputs half done.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(read(GENOMES).as_bytes()).unwrap();
        let start = Instant::now();
        while !entries(out.path()).iter().any(|n| n.contains(".tmp-")) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no temporary file appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::util::send_signal(child.id(), signal);
        let status = child.wait().unwrap();
        drop(stdin);
        assert_eq!(status.code(), Some(130), "SIG{signal}");
        assert!(
            entries(out.path()).is_empty(),
            "SIG{signal}: {:?}",
            entries(out.path())
        );
    }
}
