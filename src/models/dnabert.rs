//! PLACEHOLDER on branch `models`: the DNABERT-S (MosaicBERT, ALiBi) encoder is written on
//! another branch; this file only has the agreed signatures so that the loader compiles, and is
//! replaced wholesale at merge.

use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::{Encoder, SeqTokenizer, TokenBatch};

const NOT_HERE: &str = "the DNABERT encoder is not part of this build yet (branch `models`)";

/// `config.json` of a DNABERT-2/-S checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct DnaBertConfig {}

pub struct DnaBert;

impl DnaBert {
    pub fn load(_vb: VarBuilder, _cfg: &DnaBertConfig) -> candle_core::Result<Self> {
        Err(candle_core::Error::Msg(NOT_HERE.into()))
    }
}

impl Encoder for DnaBert {
    fn hidden_size(&self) -> usize {
        0
    }

    fn forward_pooled(&self, _batch: &TokenBatch) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(NOT_HERE.into()))
    }
}

pub struct DnaBertTokenizer;

impl DnaBertTokenizer {
    pub fn from_file(_path: &Path) -> anyhow::Result<Self> {
        anyhow::bail!(NOT_HERE)
    }
}

impl SeqTokenizer for DnaBertTokenizer {
    fn encode(&self, _id: &str, _seq: &[u8]) -> anyhow::Result<Vec<u32>> {
        anyhow::bail!(NOT_HERE)
    }

    fn pad_id(&self) -> u32 {
        0
    }
}
