//! Specs from files: every `*.yaml`/`*.yml` file under the paths given (recursive, in sorted
//! order; a path may also be one file), each file possibly holding several documents, parsed by
//! `config::manifest::load_str`. `trunkline check` and `run` call [`load_paths`].
//!
//! Hidden files and folders (names starting with `.`) are skipped: a ConfigMap mounted as a
//! volume holds every file twice, once under `..data/`.
//!
//! The watch of `trunkline run` reloads with a [`FileCache`]: every file is read again, but only
//! one whose text changed is parsed and checked again ([`load_paths_cached`]); the objects of the
//! others are taken as they were, and the files are put together in the same order, so the
//! result is the one [`load_paths`] gives.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::config::manifest::{LoadProblem, Loaded, Origin, load_str};
use crate::config::manifest::{Parsed, parse_str};

/// The files parsed by the last load, by path, with a keyed hash and the length of their text.
/// A file whose text has the same length and hash is not parsed again (the key is random per
/// process, so two different texts collide with probability 2^-64 and nobody can aim for it).
#[derive(Debug, Default)]
pub struct FileCache {
    hasher: RandomState,
    files: HashMap<PathBuf, CachedFile>,
}

#[derive(Debug)]
struct CachedFile {
    len: usize,
    hash: u64,
    parsed: Arc<Parsed>,
}

impl FileCache {
    /// The parse of `text`, read from `file`: the cached one when the text is unchanged.
    fn parse(
        &mut self,
        file: &Path,
        text: &str,
        seen: &mut HashMap<PathBuf, CachedFile>,
    ) -> Arc<Parsed> {
        let hash = self.hasher.hash_one(text.as_bytes());
        let parsed = match self.files.remove(file) {
            Some(c) if c.len == text.len() && c.hash == hash => c.parsed,
            _ => Arc::new(parse_str(file, text)),
        };
        seen.insert(
            file.to_path_buf(),
            CachedFile { len: text.len(), hash, parsed: Arc::clone(&parsed) },
        );
        parsed
    }
}

/// Loads every YAML file under `paths`.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    load_paths_cached(paths, &mut FileCache::default())
}

/// [`load_paths`], parsing again only the files whose text changed since the last call with
/// this cache. The cache then holds the files of this load only.
pub fn load_paths_cached(paths: &[PathBuf], cache: &mut FileCache) -> Loaded {
    let mut seen = HashMap::new();
    let loaded = load_with(paths, &mut |file, text, into| {
        into.add(&cache.parse(file, text, &mut seen));
    });
    cache.files = seen;
    loaded
}

fn load_with(paths: &[PathBuf], load: &mut dyn FnMut(&Path, &str, &mut Loaded)) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let mut files = Vec::new();
        let mut visited = BTreeSet::new();
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                collect_yaml_files(path, &mut files, &mut visited, &mut loaded.problems)
            }
            // A file named on the command line is read whatever its extension.
            Ok(_) => files.push(path.clone()),
            Err(e) => loaded.problems.push(LoadProblem::invalid(path, None, io_message(&e))),
        }
        for file in files {
            load_file(&file, &mut loaded, load);
        }
    }
    loaded
}

/// The YAML files under `dir`, sorted, skipping hidden entries and folders already seen
/// (symbolic link loops).
fn collect_yaml_files(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<LoadProblem>,
) {
    if let Ok(canonical) = std::fs::canonicalize(dir)
        && !visited.insert(canonical)
    {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(LoadProblem::invalid(dir, None, io_message(&e)));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => problems.push(LoadProblem::invalid(dir, None, io_message(&e))),
        }
    }
    paths.sort();
    for path in paths {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // `metadata` follows symbolic links, as a ConfigMap volume's files are links.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => collect_yaml_files(&path, files, visited, problems),
            Ok(_) if is_yaml(&path) => files.push(path),
            Ok(_) => {}
            Err(e) => problems.push(LoadProblem::invalid(&path, None, io_message(&e))),
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn io_message(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot read: {error}"),
    }
}

fn load_file(file: &Path, into: &mut Loaded, load: &mut dyn FnMut(&Path, &str, &mut Loaded)) {
    match std::fs::read(file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load(file, &text, into),
            Err(e) => into.problems.push(LoadProblem::invalid(
                file,
                None,
                format!(
                    "is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )),
        },
        Err(e) => into.problems.push(LoadProblem::invalid(file, None, io_message(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reason;
    use crate::config::manifest::tests::TRUNK;

    /// A folder under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("trunkline-folder-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_same_object_twice_keeps_the_first() {
        let dir = TempDir::new("duplicate");
        dir.write("a.yaml", TRUNK);
        dir.write("b/c.yml", &TRUNK.replace("support", "billing"));
        let loaded = load_paths(std::slice::from_ref(&dir.0));
        assert_eq!(loaded.files, 2);
        assert_eq!(loaded.specs.inbound.len(), 1);
        assert_eq!(loaded.specs.inbound[0].spec.numbers[0].agent, "support");
        assert_eq!(loaded.problems.len(), 1, "{:#?}", loaded.problems);
        let problem = &loaded.problems[0];
        assert_eq!(problem.reason, Reason::DuplicateObject);
        assert_eq!(problem.file, dir.0.join("b/c.yml"));
        let first = dir.0.join("a.yaml").display().to_string();
        assert!(problem.message.contains(&format!("{first}:1")), "{problem}");
    }

    #[test]
    fn the_namespace_defaults_and_files_load_in_sorted_order() {
        let dir = TempDir::new("order");
        dir.write(
            "b.yaml",
            &TRUNK.replace("acme-in,", "second,").replace(", namespace: voice", ""),
        );
        dir.write("a.yaml", TRUNK);
        dir.write("notes.txt", "not yaml");
        dir.write("..data/a.yaml", TRUNK);
        let loaded = load_paths(std::slice::from_ref(&dir.0));
        assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
        assert_eq!(loaded.files, 2);
        let names: Vec<(Option<&str>, Option<&str>)> = loaded
            .specs
            .inbound
            .iter()
            .map(|t| (t.metadata.namespace.as_deref(), t.metadata.name.as_deref()))
            .collect();
        assert_eq!(names, [(Some("voice"), Some("acme-in")), (Some("default"), Some("second"))]);
    }

    #[test]
    fn a_missing_path_and_a_non_utf8_file_are_problems() {
        let dir = TempDir::new("unreadable");
        let binary = dir.write("bad.yaml", "");
        std::fs::write(&binary, [0x61, 0x3a, 0x20, 0xff, 0xfe]).unwrap();
        let missing = dir.0.join("nope");
        let loaded = load_paths(&[missing.clone(), dir.0.clone()]);
        let files: Vec<&Path> = loaded.problems.iter().map(|p| p.file.as_path()).collect();
        assert_eq!(files, [missing.as_path(), binary.as_path()], "{:#?}", loaded.problems);
        assert_eq!(loaded.problems[0].message, "no such file or directory");
    }
}
