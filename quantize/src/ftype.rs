//! Output types and the per-tensor type each one gives, as llama.cpp chooses them.
//!
//! F32, F16 and BF16 follow llama.cpp's converter (`convert_hf_to_gguf.py --outtype`): norms,
//! 1-D tensors, the MoE router and every tensor whose name does not end in `.weight` stay F32.
//! The quantized types follow `llama-quantize` run on such a converted file (the rules of
//! `llama-quant.cpp`: which tensors may be quantized at all, the mixes' choices per tensor
//! role and layer, and the fallback when a row is not a whole number of blocks).

use ggml::GgmlType;

/// A target given on the command line: a file type, as llama.cpp numbers them
/// (`general.file_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    MXFP4_MOE,
}

impl FileType {
    pub const ALL: [FileType; 20] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q8_0,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
        FileType::IQ4_NL,
        FileType::IQ4_XS,
        FileType::MXFP4_MOE,
    ];

    pub fn name(self) -> &'static str {
        use FileType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q3_K_S => "Q3_K_S",
            Q3_K_M => "Q3_K_M",
            Q3_K_L => "Q3_K_L",
            Q4_K_S => "Q4_K_S",
            Q4_K_M => "Q4_K_M",
            Q5_K_S => "Q5_K_S",
            Q5_K_M => "Q5_K_M",
            Q6_K => "Q6_K",
            IQ4_NL => "IQ4_NL",
            IQ4_XS => "IQ4_XS",
            MXFP4_MOE => "MXFP4_MOE",
        }
    }

    /// Case-insensitive; `Q4_K` and `Q5_K` mean their `_M` mixes, `Q3_K` its `_M`, as in
    /// llama-quantize.
    pub fn parse(s: &str) -> Option<FileType> {
        let up = s.to_ascii_uppercase();
        let up = match up.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            "FP32" => "F32",
            "FP16" => "F16",
            other => other,
        };
        FileType::ALL.into_iter().find(|t| t.name() == up)
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`).
    pub fn id(self) -> u32 {
        use FileType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q2_K => 10,
            Q3_K_S => 11,
            Q3_K_M => 12,
            Q3_K_L => 13,
            Q4_K_S => 14,
            Q4_K_M => 15,
            Q5_K_S => 16,
            Q5_K_M => 17,
            Q6_K => 18,
            IQ4_NL => 25,
            IQ4_XS => 30,
            BF16 => 32,
            MXFP4_MOE => 38,
        }
    }

    /// Whether llama.cpp makes this type with its converter alone (else with llama-quantize).
    pub fn is_float(self) -> bool {
        matches!(self, FileType::F32 | FileType::F16 | FileType::BF16)
    }

    /// llama.cpp's `llama_ftype_get_default_type`.
    pub fn default_type(self) -> GgmlType {
        use FileType::*;
        match self {
            F32 => GgmlType::F32,
            F16 => GgmlType::F16,
            BF16 => GgmlType::BF16,
            Q4_0 => GgmlType::Q4_0,
            Q4_1 => GgmlType::Q4_1,
            Q5_0 => GgmlType::Q5_0,
            Q5_1 => GgmlType::Q5_1,
            Q8_0 => GgmlType::Q8_0,
            Q2_K => GgmlType::Q2_K,
            Q3_K_S | Q3_K_M | Q3_K_L => GgmlType::Q3_K,
            Q4_K_S | Q4_K_M => GgmlType::Q4_K,
            Q5_K_S | Q5_K_M => GgmlType::Q5_K,
            Q6_K => GgmlType::Q6_K,
            IQ4_NL => GgmlType::IQ4_NL,
            IQ4_XS => GgmlType::IQ4_XS,
            MXFP4_MOE => GgmlType::MXFP4,
        }
    }
}

/// The converter's type for a tensor (`prepare_tensors`): F32 for 1-D tensors, norms, the
/// router and anything not named `*.weight`; `float` (the --outtype) otherwise.
pub fn converter_type(name: &str, n_dims: usize, float: GgmlType) -> GgmlType {
    let router = name.starts_with("blk.") && name.ends_with(".ffn_gate_inp.weight");
    if n_dims <= 1 || name.ends_with("_norm.weight") || router || !name.ends_with(".weight") {
        GgmlType::F32
    } else {
        float
    }
}

/// llama.cpp's `tensor_allows_quantization` for the tensor names a Gemma model has.
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("altup")
        && !name.contains("laurel")
        && !name.contains("per_layer_model_proj")
        && !name.contains(".position_embd")
        && !name.contains(".patch_embd")
}

/// A tensor's role, as `llama-quant.cpp` sorts names into categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        TokenEmbd
    } else if name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") || name.contains("attn_v.weight") {
        AttnV
    } else if name.contains("attn_k.weight") {
        AttnK
    } else if name.contains("attn_q.weight") {
        AttnQ
    } else if name.contains("attn_output.weight") {
        AttnOutput
    } else if name.contains("ffn_up") {
        FfnUp
    } else if name.contains("ffn_gate") {
        FfnGate
    } else if name.contains("ffn_down") {
        FfnDown
    } else {
        Other
    }
}

/// The model facts llama-quantize's choices depend on.
#[derive(Clone, Copy, Debug)]
pub struct ModelFacts {
    pub n_layer: usize,
    /// `expert_count`, 0 for a dense model.
    pub n_expert: usize,
    /// `head_count / head_count_kv` of layer 0.
    pub n_gqa: usize,
}

/// llama-quantize's running state over the tensors, visited in its order (see
/// [`quantize_order`]).
pub struct Chooser {
    ftype: FileType,
    facts: ModelFacts,
    has_output: bool,
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
    /// Tensors whose type fell back because their rows are not whole blocks.
    pub n_fallback: usize,
}

impl Chooser {
    /// `names`: every tensor of the model.
    pub fn new(ftype: FileType, facts: ModelFacts, names: &[&str]) -> Chooser {
        Chooser {
            ftype,
            facts,
            has_output: names.contains(&"output.weight"),
            n_attention_wv: names.iter().filter(|n| category(n) == Category::AttnV).count(),
            i_attention_wv: 0,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
            n_fallback: 0,
        }
    }

    /// The output type of tensor `name` with ggml dims `dims`, whose type in the converted file
    /// is `cur`. Call once per tensor, in llama-quantize's order.
    pub fn choose(&mut self, name: &str, dims: &[u64], cur: GgmlType) -> Result<GgmlType, String> {
        if !allows_quantization(name, dims.len()) {
            return Ok(cur);
        }
        let ty = self.ftype.default_type();
        if self.ftype.is_float() {
            return Ok(ty);
        }
        let ty = self.mix(name, dims, ty)?;
        Ok(self.fallback(dims[0], ty))
    }

    fn layer_of(&self, counter: usize, name: &str) -> Result<(usize, usize), String> {
        let n_layer = self.facts.n_layer;
        if self.facts.n_expert > 1 {
            let layer = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("cannot tell the layer of tensor {name}"))?;
            if layer >= n_layer {
                return Err(format!("tensor {name}: layer {layer} is past the model's {n_layer}"));
            }
            return Ok((layer, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl` for the types we can write.
    fn mix(&mut self, name: &str, dims: &[u64], mut ty: GgmlType) -> Result<GgmlType, String> {
        use FileType as F;
        use GgmlType as G;
        let ft = self.ftype;
        let facts = self.facts;
        let use_more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2;
        let cat = category(name);

        if cat == Category::Output || (!self.has_output && cat == Category::TokenEmbd) {
            let nx = dims[0];
            if ft == F::MXFP4_MOE || !nx.is_multiple_of(ty.block_size() as u64) {
                ty = G::Q8_0;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if ft == F::MXFP4_MOE {
            ty = if dims.len() > 2 && dims[2] > 1 { G::MXFP4 } else { G::Q8_0 };
        } else if cat == Category::TokenEmbd {
            // No change for the types we write (only IQ1/IQ2/IQ3/TQ mixes have one).
        } else if cat == Category::AttnV {
            match ft {
                F::Q2_K => ty = if facts.n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q3_K_M => ty = if self.i_attention_wv < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => ty = G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if facts.n_gqa >= 4 => ty = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(self.i_attention_wv, self.n_attention_wv) => ty = G::Q6_K,
                F::Q4_K_S if self.i_attention_wv < 4 => ty = G::Q5_K,
                _ => {}
            }
            if facts.n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if facts.n_expert == 8 {
                ty = G::Q8_0;
            }
        } else if cat == Category::AttnQ {
            // Only IQ3 mixes change attn_q.
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer_of(self.i_ffn_down, name)?;
            match ft {
                F::Q2_K => ty = G::Q3_K,
                F::Q3_K_M => ty = if i < n / 16 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => ty = G::Q5_K,
                F::Q4_K_M if use_more_bits(i, n) => ty = G::Q6_K,
                F::IQ4_NL | F::IQ4_XS if i < n / 8 => ty = G::Q5_K,
                F::Q5_K_M if use_more_bits(i, n) => ty = G::Q6_K,
                F::Q4_K_S if i < n / 8 => ty = G::Q5_K,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if facts.n_expert == 8 {
                if matches!(ft, F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::IQ4_NL | F::Q4_K_S | F::Q4_K_M | F::IQ4_XS) {
                    ty = G::Q5_K;
                }
            } else {
                match ft {
                    F::Q2_K => ty = G::Q3_K,
                    F::Q3_K_M => ty = G::Q4_K,
                    F::Q3_K_L => ty = G::Q5_K,
                    _ => {}
                }
            }
        } else if cat == Category::FfnGate {
            self.layer_of(self.i_ffn_gate, name)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer_of(self.i_ffn_up, name)?;
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }

    /// `tensor_type_fallback`: a type whose block does not divide the row length is replaced.
    fn fallback(&mut self, ncols: u64, ty: GgmlType) -> GgmlType {
        use GgmlType as G;
        if ncols.is_multiple_of(ty.block_size() as u64) {
            return ty;
        }
        self.n_fallback += 1;
        let mut out = match ty {
            G::IQ4_XS => G::IQ4_NL,
            G::Q2_K | G::Q3_K => G::Q4_0,
            G::Q4_K => G::Q5_0,
            G::Q5_K => G::Q5_1,
            G::Q6_K => G::Q8_0,
            other => other,
        };
        if !ncols.is_multiple_of(out.block_size() as u64) {
            out = G::F16;
        }
        out
    }
}

/// llama-quantize's tensor order (its loader's map): tensors outside the layers first, then
/// by layer; by name within each.
pub fn quantize_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn layer(n: &str) -> i64 {
        n.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse().ok()).unwrap_or(-1)
    }
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_aliases() {
        assert_eq!(FileType::parse("q4_k_m"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("Q4_K"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("bf16"), Some(FileType::BF16));
        assert_eq!(FileType::parse("Q7"), None);
        for t in FileType::ALL {
            assert_eq!(FileType::parse(t.name()), Some(t));
        }
    }

    #[test]
    fn converter_keeps_norms_router_and_scales_f32() {
        let f16 = GgmlType::F16;
        assert_eq!(converter_type("blk.0.attn_q.weight", 2, f16), f16);
        assert_eq!(converter_type("blk.0.attn_norm.weight", 1, f16), GgmlType::F32);
        assert_eq!(converter_type("blk.0.ffn_gate_inp.weight", 2, f16), GgmlType::F32);
        assert_eq!(converter_type("blk.0.ffn_gate_inp.scale", 1, f16), GgmlType::F32);
        assert_eq!(converter_type("blk.0.ffn_down_exps.weight", 3, f16), f16);
    }

    /// 26B-A4B's Q4_K_M as DESIGN.md describes llama-quantize's: Q4_K attention and experts,
    /// Q6_K embedding (tied head), Q5_0/Q8_0 down projections (rows of 2112 and 704 are not
    /// whole 256-blocks), F32 router and norms.
    #[test]
    fn q4_k_m_of_26b_a4b_shapes() {
        let facts = ModelFacts { n_layer: 30, n_expert: 128, n_gqa: 2 };
        let names = ["token_embd.weight", "blk.0.attn_v.weight"];
        let mut c = Chooser::new(FileType::Q4_K_M, facts, &names);
        let f32 = GgmlType::F32;
        assert_eq!(c.choose("token_embd.weight", &[2816, 262144], f32), Ok(GgmlType::Q6_K));
        assert_eq!(c.choose("blk.0.attn_q.weight", &[2816, 4096], f32), Ok(GgmlType::Q4_K));
        assert_eq!(c.choose("blk.0.ffn_down.weight", &[2112, 2816], f32), Ok(GgmlType::Q8_0));
        assert_eq!(c.choose("blk.10.ffn_down.weight", &[2112, 2816], f32), Ok(GgmlType::Q5_0));
        assert_eq!(c.choose("blk.10.ffn_down_exps.weight", &[704, 2816, 128], f32), Ok(GgmlType::Q5_0));
        assert_eq!(c.choose("blk.0.ffn_gate_up_exps.weight", &[2816, 1408, 128], f32), Ok(GgmlType::Q4_K));
        assert_eq!(c.choose("blk.0.ffn_gate_inp.weight", &[2816, 128], f32), Ok(f32));
        assert_eq!(c.choose("blk.0.attn_norm.weight", &[2816], f32), Ok(f32));
        assert_eq!(c.n_fallback, 3);
    }

    #[test]
    fn order_puts_globals_first_then_layers_numerically() {
        let mut v = vec!["blk.10.a", "output_norm.weight", "blk.2.b", "blk.2.a", "rope_freqs.weight"];
        v.sort_by(|a, b| quantize_order(a, b));
        assert_eq!(v, ["output_norm.weight", "rope_freqs.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
    }
}
