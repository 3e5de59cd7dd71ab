//! Protein (or other non-nucleotide) input is refused, naming the file, the record and the
//! letters, by `predict`, `frames`, `embed` with a nucleotide model and `prepare`; real
//! nucleotide files (soft-masked, N runs, IUPAC codes, X, RNA, gaps) pass
//! (docs/FORMATS.md, "Nucleotide alphabet").

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

use crate::util::{write, BIN, O};

/// Real proteins as UniProt writes them (60 residues per line).
const PROTEINS: &str = "\
>sp|P01308|INS_HUMAN Insulin OS=Homo sapiens OX=9606 GN=INS PE=1 SV=1
MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKTRREAED
LQVGQVELGGGPGAGSLQPLALEGSLQKRGIVEQCCTSICSLYQLENYCN
>sp|P0CG48|UBC_HUMAN Polyubiquitin-C (first unit) OS=Homo sapiens OX=9606 GN=UBC
MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYN
IQKESTLHLVLRLRGG
>sp|P42212|GFP_AEQVI Green fluorescent protein OS=Aequorea victoria OX=6100 GN=GFP
MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTL
VTTFSYGVQCFSRYPDHMKQHDFFKSAMPEGYVQERTIFFKDDGNYKTRAEVKFEGDTLV
NRIELKGIDFKEDGNILGHKLEYNYNSHNVYIMADKQKNGIKVNFKIRHNIEDGSVQLAD
HYQQNTPIGDGPVLLPDNHYLSTQSALSKDPNEKRDHMVLLEFVTAAGITHGMDELYK*
";

/// A nucleotide record with everything real files hold: soft-masked lower case, an N run,
/// IUPAC codes, X-masked bases.
const NUCLEOTIDES: &str = "\
>contig_1 soft-masked, ambiguous
ATGGCTAAAGAATTCGGTCATTGGCCAGACatggctaaagaattcggtcattggccagac
NNNNNNNNNNRYSWKMBDHVrysw ATGGCTAAAGAATTCGGTCATTGGCCAGACXXXXXXACGT
";

/// `predict` on the oracle's tiny models (`esm`: the protein model directory).
fn predict(input: &Path, esm: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("predict")
        .arg(input)
        .args(["--chunk-len", "60", "--dnabert", &format!("{O}/dnabert")])
        .arg("--esm")
        .arg(esm)
        .args(["--device", "cpu"])
        .args(["--classifier", &format!("{O}/classifier/model_full.pth")])
        .arg("--out-dir")
        .arg(out);
    cmd
}

#[test]
fn predict_refuses_protein_fasta_before_loading_the_models() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "proteins.faa", PROTEINS);
    // A protein model whose config and tokenizer are fine but whose weights are not: if the
    // models were loaded before the input is read, this would fail first.
    let broken = tmp.path().join("esm");
    fs::create_dir(&broken).unwrap();
    for f in ["config.json", "vocab.txt"] {
        fs::copy(format!("{O}/fastesm/{f}"), broken.join(f)).unwrap();
    }
    fs::write(broken.join("model.safetensors"), b"not weights").unwrap();
    let out = tmp.path().join("out");
    predict(&input, &broken, &out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}, line 1 (record 1): record 'sp|P01308|INS_HUMAN' holds the letters E, F, I, L, P, Q",
            input.display()
        )))
        .stderr(predicate::str::contains("looks like protein"))
        .stderr(predicate::str::contains("Nucleotide alphabet"))
        .stderr(predicate::str::contains("cannot load").not());
    assert!(!out.exists());
}

#[test]
fn predict_refuses_a_protein_record_after_nucleotide_ones_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let genomes = fs::read_to_string(Path::new(O).join("inputs/genomes.fa")).unwrap();
    let ubiquitin = PROTEINS
        .split_inclusive('\n')
        .skip(3)
        .take(3)
        .collect::<String>();
    let input = write(tmp.path(), "mixed.fa", format!("{genomes}{ubiquitin}"));
    let line = genomes.lines().count() + 1;
    let record = genomes.matches('>').count() + 1;
    let out = tmp.path().join("out");
    predict(&input, &Path::new(O).join("fastesm"), &out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "line {line} (record {record}): record 'sp|P0CG48|UBC_HUMAN' holds the letters E, F, I, L, P, Q"
        )));
    // Nothing that looks like a result; at most the journal of the records scored before the
    // bad one (a rerun on a repaired file reuses them).
    let left: Vec<String> = fs::read_dir(&out)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n == ".virnucpro.journal"),
        "left behind: {left:?}"
    );
}

#[test]
fn frames_refuses_protein_and_accepts_real_nucleotide_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "p.fa", PROTEINS);
    let out = tmp.path().join("frames");
    Command::new(BIN)
        .arg("frames")
        .arg(&input)
        .args(["--chunk-len", "60", "--out-dir"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("record 'sp|P01308|INS_HUMAN'"))
        .stderr(predicate::str::contains("looks like protein"));
    assert!(!out.exists());

    let input = write(tmp.path(), "n.fa", NUCLEOTIDES);
    Command::new(BIN)
        .arg("frames")
        .arg(&input)
        .args(["--chunk-len", "60", "--out-dir"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("WARN").not());

    // RNA and gapped records pass, with one warning each saying what happens to them.
    let input = write(
        tmp.path(),
        "rna.fa",
        ">r1\nAUGGCUAAAGAAUUCGGU\n>r2\nAUGGCU\n>aln\nATG---GCT..AAA\n",
    );
    Command::new(BIN)
        .arg("frames")
        .arg(&input)
        .args(["--chunk-len", "60", "--out-dir"])
        .arg(tmp.path().join("rna"))
        .assert()
        .success()
        .stderr(predicate::str::contains("record 'r1'").and(predicate::str::contains("--rna2dna")))
        .stderr(predicate::str::contains("record 'r2'").not())
        .stderr(predicate::str::contains("record 'aln'").and(predicate::str::contains("gaps")));
}

#[test]
fn frames_names_other_bytes_without_calling_them_protein() {
    let tmp = tempfile::tempdir().unwrap();
    // Sequence lines with GenBank-style position numbers.
    let input = write(tmp.path(), "numbered.fa", ">n\n1 acgtacgt\n9 ggcc\n");
    Command::new(BIN)
        .arg("frames")
        .arg(&input)
        .args(["--chunk-len", "60", "--out-dir"])
        .arg(tmp.path().join("out"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("the letters 1, 9"))
        .stderr(predicate::str::contains("not nucleotide codes"));
}

#[test]
fn embed_refuses_protein_for_a_nucleotide_model_only() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write(tmp.path(), "p.faa", PROTEINS);
    Command::new(BIN)
        .args(["embed", "--device", "cpu", "--model", &format!("{O}/dnabert")])
        .arg(&input)
        .arg("--out")
        .arg(tmp.path().join("dna.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}, line 1 (record 1): record 'sp|P01308|INS_HUMAN' holds the letters E, F, I, L, P, Q",
            input.display()
        )))
        .stderr(predicate::str::contains("is a nucleotide model"));
    assert!(!tmp.path().join("dna.safetensors").exists());
    // The same proteins with a protein model are what `embed` is for.
    Command::new(BIN)
        .args([
            "embed",
            "--device",
            "cpu",
            "--model",
            &format!("{O}/fastesm"),
        ])
        .arg(&input)
        .arg("--out")
        .arg(tmp.path().join("prot.safetensors"))
        .assert()
        .success();
}

#[test]
fn prepare_refuses_protein_genbank_records() {
    let tmp = tempfile::tempdir().unwrap();
    // A GenPept record (protein GenBank) given where nucleotide GenBank is expected.
    let genpept = "\
LOCUS       NP_000198                110 aa            linear   PRI 01-JAN-2000
DEFINITION  insulin preproprotein [Homo sapiens].
ACCESSION   NP_000198
VERSION     NP_000198.1
KEYWORDS    RefSeq.
SOURCE      Homo sapiens (human)
  ORGANISM  Homo sapiens
            Eukaryota.
FEATURES             Location/Qualifiers
     source          1..110
                     /organism=\"Homo sapiens\"
     CDS             1..110
                     /gene=\"INS\"
                     /translation=\"MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKTRREAEDLQVGQVELGGGPGAGSLQPLALEGSLQKRGIVEQCCTSICSLYQLENYCN\"
ORIGIN      
        1 malwmrllpl lallalwgpd paaafvnqhl cgshlvealy lvcgergffy tpktrreaed
       61 lqvgqvelgg gpgagslqpl alegslqkrg iveqcctsic slyqlenycn
//
";
    let viral = write(tmp.path(), "viral.gpff", genpept);
    Command::new(BIN)
        .args(["prepare", "--chunk-len", "30", "--viral"])
        .arg(&viral)
        .arg("--host")
        .arg(&viral)
        .arg("--out-dir")
        .arg(tmp.path().join("out"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}:1: GenBank record #1 (NP_000198.1) holds the letters E, F, I, L, P, Q",
            viral.display()
        )))
        .stderr(predicate::str::contains("GenPept"));
}
