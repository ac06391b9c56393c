//! Compile step: turns a C object under `bpf/` plus the plan's node-config defines into a BPF
//! ELF file, like Cilium's loader compiles `bpf_host.c` with a generated `node_config.h`.
//!
//! Objects are cached by a hash of everything that shapes them (source files, defines, clang
//! version, flags): in memory per [`Compiler`] and on disk in the cache dir, written through a
//! rename so parallel test processes sharing a cache dir never see half-written files.
//!
//! The C sources of `bpf/` are compiled into the binary ([`EMBEDDED_SOURCES`]), so an installed
//! `hostdp` needs no checkout: before its first compile, a compiler writes them to
//! `<cache>/sources/<hash of the sources>/` (once; the folder is reused by every later run with
//! the same sources) and points clang there. `HOSTDP_BPF_DIR` (tests) names a folder instead.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use hostdp_model::datapath::Object;

/// Environment variable naming the clang binary; `clang` on PATH otherwise.
pub const CLANG_ENV: &str = "HOSTDP_CLANG";

/// Environment variable overriding the C sources compiled into the binary (read by
/// [`crate::paths`]).
pub const BPF_DIR_ENV: &str = "HOSTDP_BPF_DIR";

/// Every file of `bpf/` that a compile may read (`.c` and `.h`), as compiled into the binary.
/// `embedded_sources_are_the_whole_bpf_folder` checks that this list and the folder agree.
pub const EMBEDDED_SOURCES: &[(&str, &str)] = &[
    ("bpf_host.c", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/bpf_host.c"))),
    ("bpf_lxc.c", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/bpf_lxc.c"))),
    ("bpf_overlay.c", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/bpf_overlay.c"))),
    ("bpf_wireguard.c", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/bpf_wireguard.c"))),
    ("bpf_xdp.c", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/bpf_xdp.c"))),
    ("foreign.c", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/foreign.c"))),
    ("include/hostdp.h", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/include/hostdp.h"))),
    ("include/policy.h", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/include/policy.h"))),
];

/// Where a compiler's C sources come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BpfSources {
    /// [`EMBEDDED_SOURCES`], written into the cache before the first compile.
    Embedded,
    /// A folder laid out as `bpf/` (a test's broken sources, `HOSTDP_BPF_DIR`).
    Dir(PathBuf),
}

impl From<PathBuf> for BpfSources {
    fn from(d: PathBuf) -> BpfSources {
        BpfSources::Dir(d)
    }
}

/// Bumped when the flags or the layout of the cache change, so old entries are not reused.
const CACHE_VERSION: &str = "hostdp-compile-v1";

/// Flags besides include paths; part of the cache key.
const CFLAGS: &[&str] = &["-O2", "-g", "-target", "bpf", "-mcpu=v2", "-Wall", "-Wextra", "-Wno-unused-parameter"];

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "compile: clang not found (tried `{0}`); install clang (apt-get install clang llvm) or run \
         ci/setup, or point {CLANG_ENV} at a clang binary"
    )]
    NoClang(String),
    #[error("compile {object}: clang exited with {status}:\n{stderr}")]
    Clang { object: String, status: String, stderr: String },
    #[error("compile {object}: {source}")]
    Io {
        object: String,
        #[source]
        source: Arc<FsError>,
    },
    #[error("compile {object}: source {path} not found")]
    MissingSource { object: String, path: String },
    #[error("compile: invalid define {name:?}: {message}")]
    BadDefine { name: String, message: String },
}

/// A failed file-system call: what was done to which path, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct FsError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

/// `what` failed with `source`.
fn fs(what: String) -> impl FnOnce(std::io::Error) -> FsError {
    move |source| FsError { what, source }
}

/// A compiled object on disk, and the cache key it was built under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledObject {
    pub path: PathBuf,
    /// Hex sha256 of sources + defines + clang version + flags.
    pub hash: String,
}

/// The folder clang compiles from, and every source file under it with its bytes, read once
/// per compiler.
type Sources = (PathBuf, Vec<(PathBuf, Vec<u8>)>);

/// Compiles objects with caching. Shareable between threads (`&Compiler` is `Sync`).
#[derive(Debug)]
pub struct Compiler {
    bpf: BpfSources,
    cache_dir: PathBuf,
    clang: String,
    /// `clang --version`, asked once; part of the cache key.
    version: OnceLock<Result<String, String>>,
    /// Hash → object. Held while compiling so one process never runs clang twice for a key.
    memory: Mutex<HashMap<String, CompiledObject>>,
    invocations: AtomicUsize,
    /// The sources, read once per compiler: every attach asks for its object, and reading and
    /// hashing the whole folder each time was a measurable share of a warm run.
    sources: OnceLock<Result<Sources, Arc<FsError>>>,
}

/// The sources compiled into the binary, or `$HOSTDP_BPF_DIR`'s folder.
pub fn default_bpf_dir() -> BpfSources {
    match &crate::paths::get().bpf_dir {
        Some(d) => BpfSources::Dir(d.clone()),
        None => BpfSources::Embedded,
    }
}

impl Compiler {
    pub fn new(bpf: impl Into<BpfSources>, cache_dir: PathBuf) -> Compiler {
        let clang = crate::paths::get().clang.clone().unwrap_or_else(|| "clang".into());
        Compiler {
            bpf: bpf.into(),
            cache_dir,
            clang,
            version: OnceLock::new(),
            memory: Mutex::new(HashMap::new()),
            invocations: AtomicUsize::new(0),
            sources: OnceLock::new(),
        }
    }

    /// Where the sources are: `None` for embedded sources not yet written into the cache.
    pub fn bpf_dir(&self) -> Option<&Path> {
        match &self.bpf {
            BpfSources::Dir(d) => Some(d),
            BpfSources::Embedded => self.sources.get().and_then(|s| s.as_ref().ok()).map(|(d, _)| d.as_path()),
        }
    }

    /// The sources and the folder clang reads them from (embedded ones written out first).
    fn sources(&self) -> Result<&Sources, Arc<FsError>> {
        let s = self.sources.get_or_init(|| match &self.bpf {
            BpfSources::Dir(d) => source_files(d).map(|files| (d.clone(), files)).map_err(Arc::new),
            BpfSources::Embedded => materialize(&self.cache_dir).map_err(Arc::new),
        });
        s.as_ref().map_err(Clone::clone)
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// How many times this compiler ran clang to build an object (cache misses).
    pub fn clang_invocations(&self) -> usize {
        self.invocations.load(Ordering::SeqCst)
    }

    /// The first line of `clang --version`, or [`CompileError::NoClang`].
    pub fn clang_version(&self) -> Result<String, CompileError> {
        let v = self.version.get_or_init(|| {
            // Starting clang costs tens of milliseconds, once per process: the answer is kept
            // on disk beside the objects, keyed by the binary's path, size and mtime.
            let memo = clang_stamp(&self.clang).map(|stamp| self.cache_dir.join("clang-version").join(stamp));
            if let Some(v) = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok()).filter(|v| !v.is_empty()) {
                return Ok(v);
            }
            let out = Command::new(&self.clang).arg("--version").output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("`{} --version` exited with {}", self.clang, out.status));
            }
            let v = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string();
            if let Some(m) = &memo {
                if m.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok()) {
                    let _ = write_atomic(m, v.as_bytes());
                }
            }
            Ok(v)
        });
        v.clone().map_err(|_| CompileError::NoClang(self.clang.clone()))
    }

    /// Compiles `object` with `defines` written into its `node_config.h`, or returns the cached
    /// result of an earlier identical build.
    pub fn compile(&self, object: Object, defines: &BTreeMap<String, String>) -> Result<CompiledObject, CompileError> {
        let header = node_config(defines)?;
        let version = self.clang_version()?;
        let io = |e: FsError| CompileError::Io { object: object.source().to_string(), source: Arc::new(e) };
        let (dir, sources) =
            self.sources().map_err(|e| CompileError::Io { object: object.source().into(), source: e })?;
        if !sources.iter().any(|(rel, _)| rel == Path::new(object.source())) {
            let path = dir.join(object.source()).display().to_string();
            return Err(CompileError::MissingSource { object: object.source().into(), path });
        }
        let hash = cache_key(object, &version, sources, &header);

        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = memory.get(&hash) {
            if hit.path.exists() {
                return Ok(hit.clone());
            }
        }
        let stem = object.source().trim_end_matches(".c");
        let objects = self.cache_dir.join("objects");
        let path = objects.join(format!("{stem}-{hash}.o"));
        if !path.exists() {
            let state = self.cache_dir.join("state").join(&hash);
            std::fs::create_dir_all(&state).map_err(fs(format!("create {}", state.display()))).map_err(io)?;
            write_atomic(&state.join("node_config.h"), header.as_bytes()).map_err(io)?;
            std::fs::create_dir_all(&objects).map_err(fs(format!("create {}", objects.display()))).map_err(io)?;
            if !compiled_by_host(object, defines, &hash, &path) {
                self.run_clang(object, dir, &state, &path)?;
            }
        }
        let compiled = CompiledObject { path, hash: hash.clone() };
        memory.insert(hash, compiled.clone());
        Ok(compiled)
    }

    /// Runs clang into a temporary file next to `out`, then renames it into place.
    fn run_clang(&self, object: Object, bpf_dir: &Path, state: &Path, out: &Path) -> Result<(), CompileError> {
        let name = object.source().to_string();
        let io = |e: FsError| CompileError::Io { object: name.clone(), source: Arc::new(e) };
        let dir = out.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".compile-")
            .tempdir_in(dir)
            .map_err(fs(format!("temporary dir in {}", dir.display())))
            .map_err(io)?;
        let tmp_out = tmp.path().join("out.o");
        let mut cmd = Command::new(&self.clang);
        cmd.args(CFLAGS);
        for inc in include_dirs(bpf_dir, state) {
            cmd.arg("-I").arg(inc);
        }
        cmd.arg("-c").arg(bpf_dir.join(object.source())).arg("-o").arg(&tmp_out);
        self.invocations.fetch_add(1, Ordering::SeqCst);
        crate::sys::timing::count_clang();
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CompileError::NoClang(self.clang.clone()))
            }
            Err(e) => return Err(io(fs(format!("run {}", self.clang))(e))),
        };
        if !output.status.success() {
            return Err(CompileError::Clang {
                object: name,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_string(),
            });
        }
        std::fs::rename(&tmp_out, out).map_err(fs(format!("rename into {}", out.display()))).map_err(io)
    }
}

/// How long a guest waits for the host to compile one template before it runs clang itself.
const HOST_COMPILE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// In a VM guest (`HOSTDP_COMPILE_HOST` set): asks the host to compile `object` with `defines`
/// and waits for the object at `out`. Under TCG clang runs many times slower than on the host;
/// the host's clang is the same binary (the guest sees the host's root), and the host computes
/// the same cache key, so its object lands at the same path in the shared cache. False (the
/// guest compiles itself) when no host answers, the host's build failed (clang in the guest
/// then gives the error), or its key differed.
fn compiled_by_host(object: Object, defines: &BTreeMap<String, String>, hash: &str, out: &Path) -> bool {
    let Some(dir) = &crate::paths::get().compile_host else { return false };
    let req = serde_json::json!({ "object": object.source(), "defines": defines });
    if write_atomic(&dir.join(format!("{hash}.req")), req.to_string().as_bytes()).is_err() {
        return false;
    }
    let t0 = std::time::Instant::now();
    while t0.elapsed() < HOST_COMPILE_WAIT {
        if dir.join(format!("{hash}.done")).exists() {
            return out.exists();
        }
        if dir.join(format!("{hash}.err")).exists() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// The host side of [`compiled_by_host`]: while a VM runs, a thread answers the guest's
/// requests in `dir` with `compiler` (the host's, over the same cache folder). Stops, and says
/// what it compiled, when dropped.
pub struct HostCompiles {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, std::time::Duration)>>,
    label: String,
}

impl HostCompiles {
    pub fn start(compiler: Arc<Compiler>, dir: PathBuf, label: &str) -> HostCompiles {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n, mut spent) = (0, std::time::Duration::ZERO);
            let mut done = std::collections::HashSet::new();
            loop {
                let last = flag.load(Ordering::SeqCst);
                let mut reqs: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "req") && !done.contains(p))
                    .collect();
                reqs.sort();
                for r in reqs {
                    let t0 = std::time::Instant::now();
                    let built = std::fs::read_to_string(&r)
                        .ok()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                        .and_then(|v| {
                            let object = Object::from_source(v["object"].as_str()?)?;
                            let defines: BTreeMap<String, String> =
                                serde_json::from_value(v["defines"].clone()).ok()?;
                            compiler.compile(object, &defines).ok()
                        });
                    let answer = r.with_extension(if built.is_some() { "done" } else { "err" });
                    let _ = write_atomic(&answer, b"");
                    spent += t0.elapsed();
                    n += usize::from(built.is_some());
                    done.insert(r);
                }
                if last {
                    return (n, spent);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        HostCompiles { stop, thread: Some(thread), label: label.to_string() }
    }
}

impl Drop for HostCompiles {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some((n, spent)) = self.thread.take().and_then(|t| t.join().ok()) {
            if n > 0 && !crate::paths::get().quiet {
                errln!("hostdp: [{}] compiled {n} template(s) on the host in {:.1} s", self.label, spent.as_secs_f64());
            }
        }
    }
}

/// Hex sha256 of the clang binary's resolved path, size and mtime; `None` when it is not found.
fn clang_stamp(clang: &str) -> Option<String> {
    let path = if clang.contains('/') {
        PathBuf::from(clang)
    } else {
        std::env::split_paths(crate::paths::get().exe_path.as_ref()?).map(|d| d.join(clang)).find(|p| p.is_file())?
    };
    let real = std::fs::canonicalize(&path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let mut h = Sha256::new();
    h.update(format!("{}\0{}\0{mtime}", real.display(), meta.len()).as_bytes());
    Some(hex::encode(h.finalize()))
}

/// `-I` folders: the shared header, the generated node config, and the multiarch system
/// headers (`asm/types.h`), which `-target bpf` does not search by itself.
fn include_dirs(bpf_dir: &Path, state: &Path) -> Vec<PathBuf> {
    let mut v = vec![bpf_dir.join("include"), state.to_path_buf()];
    let multiarch = PathBuf::from(format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH));
    if multiarch.is_dir() {
        v.push(multiarch);
    }
    v
}

/// The generated `node_config.h`: one `#define` per entry.
pub fn node_config(defines: &BTreeMap<String, String>) -> Result<String, CompileError> {
    let mut s = String::from("/* Generated by hostdp: node configuration of this build. */\n#pragma once\n");
    for (name, value) in defines {
        let bad = |message: &str| CompileError::BadDefine { name: name.clone(), message: message.to_string() };
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("not a C identifier"));
        }
        if value.contains(['\n', '\r', '\0']) || value.ends_with('\\') {
            return Err(bad("the value must be a single line"));
        }
        s.push_str(&format!("#define {name} {value}\n"));
    }
    Ok(s)
}

/// Every `.c` and `.h` file under `dir` (relative path, contents), sorted: any of them may be
/// included, so all of them are part of the key.
fn source_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, FsError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> Result<(), FsError> {
        let rd = std::fs::read_dir(dir).map_err(fs(format!("read {}", dir.display())))?;
        for entry in rd {
            let path = entry.map_err(fs(format!("read {}", dir.display())))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
                let data = std::fs::read(&path).map_err(fs(format!("read {}", path.display())))?;
                out.push((path.strip_prefix(root).unwrap_or(&path).to_path_buf(), data));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes [`EMBEDDED_SOURCES`] to `<cache>/sources/<hash>/` unless a complete copy is there
/// (written into a temporary sibling and renamed, so parallel runs never see half of one).
fn materialize(cache: &Path) -> Result<Sources, FsError> {
    let files: Vec<(PathBuf, Vec<u8>)> =
        EMBEDDED_SOURCES.iter().map(|(rel, text)| (PathBuf::from(rel), text.as_bytes().to_vec())).collect();
    let mut h = Sha256::new();
    for (rel, data) in &files {
        for b in [rel.to_string_lossy().as_bytes(), data.as_slice()] {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
    let parent = cache.join("sources");
    let dir = parent.join(&hex::encode(h.finalize())[..16]);
    if dir.join(".complete").is_file() {
        return Ok((dir, files));
    }
    std::fs::create_dir_all(&parent).map_err(fs(format!("create {}", parent.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".sources-")
        .tempdir_in(&parent)
        .map_err(fs(format!("temporary dir in {}", parent.display())))?;
    for (rel, data) in &files {
        let f = tmp.path().join(rel);
        if let Some(d) = f.parent() {
            std::fs::create_dir_all(d).map_err(fs(format!("create {}", d.display())))?;
        }
        std::fs::write(&f, data).map_err(fs(format!("write {}", f.display())))?;
    }
    std::fs::write(tmp.path().join(".complete"), b"").map_err(fs(format!("write in {}", tmp.path().display())))?;
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            // The folder now lives under its final name; nothing is left to delete.
            let _ = tmp.keep();
        }
        // Another run put the same sources there first.
        Err(_) if dir.join(".complete").is_file() => {}
        Err(e) => return Err(fs(format!("rename into {}", dir.display()))(e)),
    }
    Ok((dir, files))
}

fn cache_key(object: Object, clang_version: &str, sources: &[(PathBuf, Vec<u8>)], header: &str) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(CACHE_VERSION.as_bytes());
    field(clang_version.as_bytes());
    field(CFLAGS.join(" ").as_bytes());
    field(object.source().as_bytes());
    for (rel, data) in sources {
        field(rel.to_string_lossy().as_bytes());
        field(data);
    }
    field(header.as_bytes());
    hex::encode(h.finalize())
}

/// Writes a file through a temporary sibling and a rename, so a concurrent reader sees the
/// old file or the new one, never half of one (the caches are shared by parallel runs).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fs(format!("temporary file in {}", dir.display())))?;
    tmp.write_all(data).map_err(fs(format!("write {}", path.display())))?;
    tmp.persist(path).map_err(|e| fs(format!("rename into {}", path.display()))(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defines(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn no_clang() -> bool {
        let missing = Compiler::new(default_bpf_dir(), std::env::temp_dir()).clang_version().is_err();
        if missing {
            errln!("skipping: no clang");
        }
        missing
    }

    #[test]
    fn embedded_sources_are_the_whole_bpf_folder() {
        let dir = crate::paths::build_checkout().join("bpf");
        let on_disk = source_files(&dir).unwrap();
        let embedded: Vec<(PathBuf, Vec<u8>)> =
            EMBEDDED_SOURCES.iter().map(|(r, t)| (PathBuf::from(r), t.as_bytes().to_vec())).collect();
        let names = |v: &[(PathBuf, Vec<u8>)]| v.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&embedded), names(&on_disk), "EMBEDDED_SOURCES must list every .c and .h of bpf/");
        assert!(embedded == on_disk, "an embedded source differs from bpf/ (rebuild)");
    }

    #[test]
    fn embedded_sources_are_written_once_and_keyed_like_the_folder() {
        let cache = tempfile::tempdir().unwrap();
        let (dir, files) = materialize(cache.path()).unwrap();
        assert!(dir.join("include/hostdp.h").is_file() && dir.join("bpf_host.c").is_file());
        assert_eq!(source_files(&dir).unwrap(), files);
        let again = materialize(cache.path()).unwrap();
        assert_eq!(again.0, dir);
        assert_eq!(std::fs::read_dir(cache.path().join("sources")).unwrap().count(), 1);
        let from_dir = source_files(&crate::paths::build_checkout().join("bpf")).unwrap();
        let hdr = "#define A 1\n";
        assert_eq!(cache_key(Object::Host, "clang", &files, hdr), cache_key(Object::Host, "clang", &from_dir, hdr));
    }

    #[test]
    fn node_config_lists_defines_in_order() {
        let h = node_config(&defines(&[("ENABLE_NODEPORT", "1"), ("DIRECT_ROUTING_DEV_IFINDEX", "4")])).unwrap();
        assert!(h.contains("#define DIRECT_ROUTING_DEV_IFINDEX 4\n#define ENABLE_NODEPORT 1\n"), "{h}");
    }

    #[test]
    fn node_config_rejects_bad_names_and_values() {
        for (k, v) in [("1ABC", "1"), ("A-B", "1"), ("", "1"), ("OK", "1\n#define X 2"), ("OK", "a\\")] {
            let e = node_config(&defines(&[(k, v)])).unwrap_err();
            assert!(matches!(e, CompileError::BadDefine { .. }), "{k:?}={v:?}: {e}");
        }
    }

    #[test]
    fn key_changes_with_every_input() {
        let src = vec![(PathBuf::from("bpf_host.c"), b"int x;".to_vec())];
        let base = cache_key(Object::Host, "clang 14", &src, "#define A 1\n");
        assert_ne!(base, cache_key(Object::Xdp, "clang 14", &src, "#define A 1\n"));
        assert_ne!(base, cache_key(Object::Host, "clang 15", &src, "#define A 1\n"));
        assert_ne!(base, cache_key(Object::Host, "clang 14", &src, "#define A 2\n"));
        let src2 = vec![(PathBuf::from("bpf_host.c"), b"int y;".to_vec())];
        assert_ne!(base, cache_key(Object::Host, "clang 14", &src2, "#define A 1\n"));
        assert_eq!(base, cache_key(Object::Host, "clang 14", &src, "#define A 1\n"));
    }

    #[test]
    fn missing_clang_says_how_to_install_it() {
        let c = Compiler {
            clang: "/nonexistent/clang-hostdp".into(),
            ..Compiler::new(default_bpf_dir(), std::env::temp_dir())
        };
        let e = c.compile(Object::Host, &BTreeMap::new()).unwrap_err();
        assert!(matches!(e, CompileError::NoClang(_)));
        assert!(e.to_string().contains("apt-get install clang llvm"), "{e}");
    }

    #[test]
    fn compiles_every_object_once_then_hits_the_caches() {
        if no_clang() {
            return;
        }
        let cache = tempfile::tempdir().unwrap();
        let d = defines(&[("ENABLE_NODEPORT", "1")]);
        let c = Compiler::new(default_bpf_dir(), cache.path().to_path_buf());
        let objs = [Object::Host, Object::Xdp, Object::Lxc, Object::Foreign, Object::Overlay, Object::Wireguard];
        let first: Vec<_> = objs.iter().map(|o| c.compile(*o, &d).unwrap()).collect();
        assert_eq!(c.clang_invocations(), 6);
        for o in &first {
            let data = std::fs::read(&o.path).unwrap();
            assert_eq!(&data[..4], b"\x7fELF", "{}", o.path.display());
        }
        // Memory cache.
        assert_eq!(c.compile(Object::Host, &d).unwrap(), first[0]);
        assert_eq!(c.clang_invocations(), 6);
        // Disk cache, from a fresh compiler.
        let c2 = Compiler::new(default_bpf_dir(), cache.path().to_path_buf());
        assert_eq!(c2.compile(Object::Host, &d).unwrap(), first[0]);
        assert_eq!(c2.clang_invocations(), 0);
        // Other defines, other object.
        let other = c2.compile(Object::Host, &BTreeMap::new()).unwrap();
        assert_ne!(other.hash, first[0].hash);
        assert_eq!(c2.clang_invocations(), 1);
        let hdr =
            std::fs::read_to_string(cache.path().join("state").join(&first[0].hash).join("node_config.h")).unwrap();
        assert!(hdr.contains("#define ENABLE_NODEPORT 1"));
    }

    #[test]
    fn clang_errors_carry_its_stderr() {
        if no_clang() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("include")).unwrap();
        std::fs::write(src.path().join("bpf_xdp.c"), "this is not C;\n").unwrap();
        let cache = tempfile::tempdir().unwrap();
        let c = Compiler::new(src.path().to_path_buf(), cache.path().to_path_buf());
        let e = c.compile(Object::Xdp, &BTreeMap::new()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CompileError::Clang { .. }), "{msg}");
        assert!(msg.contains("bpf_xdp.c") && msg.contains("error"), "{msg}");
        let e = c.compile(Object::Lxc, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
