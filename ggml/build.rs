//! Compiles the Vulkan compute shaders (`shaders/*.comp`, GLSL) to SPIR-V with shaderc's
//! vendored glslang, one module per variant, and writes `OUT_DIR/shaders.rs`: the table
//! `SHADERS` of (variant name, SPIR-V bytes) that `vulkan::pipelines` builds pipelines from.
//!
//! A variant is a source file plus defines (`DATA_A_Q4_K`, ...), as llama.cpp's Vulkan backend
//! makes them: one source per op family, never a copy per type.

fn main() {
    #[cfg(feature = "vulkan")]
    shaders::compile();
}

#[cfg(feature = "vulkan")]
mod shaders {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};

    /// Every weight type the matrix kernels read, as (define, variant suffix).
    const WEIGHT_TYPES: &[(&str, &str)] = &[
        ("DATA_A_F32", "f32"),
        ("DATA_A_F16", "f16"),
        ("DATA_A_BF16", "bf16"),
        ("DATA_A_Q8_0", "q8_0"),
        ("DATA_A_Q5_0", "q5_0"),
        ("DATA_A_Q4_K", "q4_k"),
        ("DATA_A_Q6_K", "q6_k"),
    ];

    /// Every KV cache type, as (its code in `shaders/kv.glsl`, variant suffix).
    const KV_TYPES: &[(u32, &str)] = &[(0, "f32"), (1, "f16"), (2, "bf16"), (3, "q8_0"), (4, "q4_0")];

    /// One SPIR-V module: a source compiled with some defines (`NAME` set to 1, or `NAME=VALUE`).
    struct Variant {
        name: String,
        source: String,
        defines: Vec<String>,
    }

    fn variant(name: impl Into<String>, source: impl Into<String>, defines: &[&str]) -> Variant {
        Variant { name: name.into(), source: source.into(), defines: defines.iter().map(|d| d.to_string()).collect() }
    }

    fn variants() -> Vec<Variant> {
        let mut v = Vec::new();
        for &(define, suffix) in WEIGHT_TYPES {
            v.push(variant(format!("matvec_{suffix}"), "matvec.comp", &[define]));
            v.push(variant(format!("matvec_id_{suffix}"), "matvec.comp", &[define, "MUL_MAT_ID"]));
            v.push(variant(format!("get_rows_{suffix}"), "get_rows.comp", &[define]));
        }
        for name in ["rms_norm", "rope_neox", "gelu_mul", "binary", "unary", "moe_route", "moe_sum", "hadamard"] {
            v.push(variant(name, format!("{name}.comp"), &[]));
        }
        // A store per cache type, an attention per pair of K and V types.
        for &(k, k_name) in KV_TYPES {
            v.push(variant(format!("kv_store_{k_name}"), "kv_store.comp", &[&format!("KV_TYPE={k}")]));
            for &(v_code, v_name) in KV_TYPES {
                let defines = [format!("K_TYPE={k}"), format!("V_TYPE={v_code}")];
                v.push(variant(format!("attention_{k_name}_{v_name}"), "attention.comp", &[&defines[0], &defines[1]]));
            }
        }
        v
    }

    pub fn compile() {
        // Read at run time: a build script compiled for one checkout may run for another that
        // shares the target directory (CI's cache), and must read that checkout's shaders.
        let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("shaders");
        println!("cargo::rerun-if-changed={}", dir.display());
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
        let compiler = shaderc::Compiler::new().expect("shaderc compiler");
        let mut table = String::from("/// (variant, SPIR-V) for every compiled shader variant.\n");
        table.push_str("pub const SHADERS: &[(&str, &[u8])] = &[\n");
        for Variant { name, source, defines } in variants() {
            let path = dir.join(&source);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut options = shaderc::CompileOptions::new().unwrap();
            options.set_target_env(shaderc::TargetEnv::Vulkan, shaderc::EnvVersion::Vulkan1_2 as u32);
            options.set_optimization_level(shaderc::OptimizationLevel::Performance);
            let include_dir = dir.clone();
            options.set_include_callback(move |file, _, _, _| {
                let p = include_dir.join(file);
                let content = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(shaderc::ResolvedInclude { resolved_name: p.display().to_string(), content })
            });
            for d in &defines {
                match d.split_once('=') {
                    Some((name, value)) => options.add_macro_definition(name, Some(value)),
                    None => options.add_macro_definition(d, Some("1")),
                }
            }
            let spirv = compiler
                .compile_into_spirv(&text, shaderc::ShaderKind::Compute, &source, "main", Some(&options))
                .unwrap_or_else(|e| panic!("shader {name} ({source}): {e}"));
            let file = out.join(format!("{name}.spv"));
            std::fs::write(&file, spirv.as_binary_u8()).unwrap();
            writeln!(table, "    ({name:?}, include_bytes!({:?})),", file.display().to_string()).unwrap();
        }
        table.push_str("];\n");
        std::fs::write(out.join("shaders.rs"), table).unwrap();
    }
}
