//! `src/backend/cpu/`, `shaders/` and `kernels/` mirror each other file for file (DESIGN.md,
//! "One specification, three backends"), and no shader entry point is dead code.
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// File stems in `dir` with extension `ext`, sorted (empty if the folder does not exist).
fn stems(dir: &Path, ext: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// WGSL without `//` comments.
fn strip_comments(src: &str) -> String {
    src.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names of the `@compute` entry points of a WGSL source: the first `fn NAME` after each
/// `@compute` attribute.
fn entry_points(src: &str) -> Vec<String> {
    let src = strip_comments(src);
    let mut names = vec![];
    let mut rest = src.as_str();
    while let Some(at) = rest.find("@compute") {
        rest = &rest[at + "@compute".len()..];
        let f = rest
            .find("fn ")
            .expect("an @compute attribute precedes a function");
        let name: String = rest[f + 3..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        names.push(name);
    }
    names
}

#[test]
fn every_cpu_op_family_should_have_shader_and_kernel_twins() {
    let cpu: Vec<String> = stems(&root().join("src/backend/cpu"), "rs")
        .into_iter()
        .filter(|s| s != "mod")
        .collect();
    assert!(!cpu.is_empty(), "no CPU op families found");
    let shaders = stems(&root().join("shaders"), "wgsl");
    let kernels = stems(&root().join("kernels"), "cu");
    for stem in &cpu {
        assert!(
            shaders.contains(stem),
            "src/backend/cpu/{stem}.rs has no twin shaders/{stem}.wgsl (have {shaders:?})"
        );
        if !kernels.is_empty() {
            assert!(
                kernels.contains(stem),
                "src/backend/cpu/{stem}.rs has no twin kernels/{stem}.cu (have {kernels:?})"
            );
        }
    }
}

#[test]
fn every_shader_entry_point_should_be_used_by_the_wgpu_backend() {
    let mut files = vec![];
    rust_files(&root().join("src/backend/wgpu"), &mut files);
    let rust: String = files
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    let mut total = 0;
    for stem in stems(&root().join("shaders"), "wgsl") {
        let path = root().join("shaders").join(format!("{stem}.wgsl"));
        let names = entry_points(&fs::read_to_string(&path).unwrap());
        if stem != "common" {
            assert!(
                !names.is_empty(),
                "{} has no @compute entry point",
                path.display()
            );
        }
        for name in names {
            assert!(
                rust.contains(&format!("\"{name}\"")),
                "entry point {name} of shaders/{stem}.wgsl is not referenced by name from \
                 src/backend/wgpu/"
            );
            total += 1;
        }
    }
    assert!(total > 0, "no entry points found");
}

#[test]
fn entry_point_parsing_should_find_names_after_attributes() {
    let src = "// @compute fn commented()\n@compute @workgroup_size(64, 1)\nfn  first(a: u32) {}\n\
               fn helper() {}\n@compute\n@workgroup_size(8)\nfn second_one() {}";
    assert_eq!(entry_points(src), vec!["first", "second_one"]);
}
