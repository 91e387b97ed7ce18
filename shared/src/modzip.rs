//! Module zip rules of golang.org/x/mod/zip, checked before anything is stored.
//!
//! A module zip holds only files under `<module>@<version>/`, with clean,
//! portable names that do not collide when case is folded, within size
//! limits. The check streams each file once, so it also yields the `h1:` hash.

use std::collections::HashMap;
use std::io::{Read, Seek};

use crate::dirhash;
use crate::module;

/// Largest module zip, and largest total of its uncompressed files.
pub const MAX_ZIP_FILE: u64 = 500 << 20;
/// Largest go.mod, alone or inside a zip.
pub const MAX_GO_MOD: u64 = 16 << 20;
/// Largest LICENSE inside a zip.
pub const MAX_LICENSE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("module zip file is too large ({0} bytes; limit is {MAX_ZIP_FILE} bytes)")]
    TooLarge(u64),
    #[error("not a readable zip: {0}")]
    Unreadable(String),
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("total uncompressed size of module contents too large (max size is {MAX_ZIP_FILE} bytes)")]
    ContentsTooLarge,
}

/// What a valid zip holds.
#[derive(Debug, Clone)]
pub struct CheckedZip {
    pub h1: String,
    pub files: usize,
    pub uncompressed: u64,
}

/// Checks a module zip of `module@version` as x/mod's `CheckZip` and hashes
/// it as `dirhash.HashZip`. `zip_size` is the size of the whole file.
pub fn check_zip<R: Read + Seek>(
    r: R,
    zip_size: u64,
    module_path: &str,
    version: &str,
) -> Result<CheckedZip, ZipError> {
    if zip_size > MAX_ZIP_FILE {
        return Err(ZipError::TooLarge(zip_size));
    }
    let mut zip = zip::ZipArchive::new(r).map_err(|e| ZipError::Unreadable(e.to_string()))?;
    let prefix = format!("{module_path}@{version}/");
    let mut folded: HashMap<String, (String, bool)> = HashMap::new();
    let mut total: u64 = 0;
    let mut digests = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let f = zip.by_index(i).map_err(|e| ZipError::Unreadable(e.to_string()))?;
        let full = f.name().map_err(|e| ZipError::Unreadable(e.to_string()))?.to_string();
        let bad = |reason: String| ZipError::File { file: full.clone(), reason };
        let name = full.strip_prefix(&prefix).ok_or_else(|| bad(format!("path does not have prefix {prefix:?}")))?;
        let (name, is_dir) = match name.strip_suffix('/') {
            Some(n) => (n, true),
            None => (name, false),
        };
        if !name.is_empty() {
            if name.split('/').any(|e| e.is_empty() || e == "." || e == "..") {
                return Err(bad("file path is not clean".into()));
            }
            module::check_file_path(name).map_err(|e| bad(e.to_string()))?;
            check_collision(&mut folded, name, is_dir).map_err(bad)?;
        }
        if !is_dir && !name.is_empty() {
            let base = name.rsplit('/').next().unwrap_or(name);
            if base.eq_ignore_ascii_case("go.mod") {
                if base != name {
                    return Err(bad("go.mod file not in module root directory".into()));
                }
                if name != "go.mod" {
                    return Err(bad("go.mod files must have lowercase names".into()));
                }
            }
            let size = f.size();
            total = total.checked_add(size).filter(|t| *t <= MAX_ZIP_FILE).ok_or(ZipError::ContentsTooLarge)?;
            if name == "go.mod" && size > MAX_GO_MOD {
                return Err(bad(format!("go.mod file too large (max size is {MAX_GO_MOD} bytes)")));
            }
            if name == "LICENSE" && size > MAX_LICENSE {
                return Err(bad(format!("LICENSE file too large (max size is {MAX_LICENSE} bytes)")));
            }
        }
        // Reading through the decompressor also checks the CRC and the
        // declared size, so a truncated or forged entry fails here.
        let digest = dirhash::sha256_reader(f.take(MAX_ZIP_FILE + 1)).map_err(|e| bad(format!("unreadable: {e}")))?;
        digests.push((full, digest));
    }
    let files = digests.len();
    let h1 = dirhash::hash1_from_digests(digests).map_err(|e| ZipError::Unreadable(e.to_string()))?;
    Ok(CheckedZip { h1, files, uncompressed: total })
}

/// Records `name` and its parent directories under their case-folded form;
/// two different names that fold alike collide, as do a file and a directory.
fn check_collision(seen: &mut HashMap<String, (String, bool)>, name: &str, is_dir: bool) -> Result<(), String> {
    let fold = name.to_lowercase();
    if let Some((other, other_dir)) = seen.get(&fold) {
        if other != name {
            return Err(format!("case-insensitive file name collision: {other:?} and {name:?}"));
        }
        if *other_dir != is_dir {
            return Err(format!("entry {name:?} is both a file and a directory"));
        }
        if !is_dir {
            return Err(format!("multiple entries for file {name:?}"));
        }
        return Ok(());
    }
    seen.insert(fold, (name.to_string(), is_dir));
    if let Some((parent, _)) = name.rsplit_once('/') {
        check_collision(seen, parent, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn make(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).expect("start");
            w.write_all(data).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    fn check(entries: &[(&str, &[u8])]) -> Result<CheckedZip, ZipError> {
        let z = make(entries);
        check_zip(Cursor::new(&z), z.len() as u64, "example.com/m", "v1.0.0")
    }

    #[test]
    fn accepts_a_module_zip_and_hashes_it() {
        let z = check(&[
            ("example.com/m@v1.0.0/go.mod", b"module example.com/m\n"),
            ("example.com/m@v1.0.0/m.go", b"package m\n"),
        ])
        .expect("valid");
        assert_eq!(z.files, 2);
        let bytes = make(&[
            ("example.com/m@v1.0.0/go.mod", b"module example.com/m\n"),
            ("example.com/m@v1.0.0/m.go", b"package m\n"),
        ]);
        assert_eq!(dirhash::hash_zip(Cursor::new(bytes)).expect("hash"), z.h1);
    }

    #[test]
    fn refuses_what_x_mod_refuses() {
        for entries in [
            &[("other.com/m@v1.0.0/a.go", &b""[..])][..],
            &[("example.com/m@v1.0.0/../a.go", b"")],
            &[("example.com/m@v1.0.0/a:b.go", b"")],
            &[("example.com/m@v1.0.0/A.go", b""), ("example.com/m@v1.0.0/a.go", b"")],
            &[("example.com/m@v1.0.0/Dir/a.go", b""), ("example.com/m@v1.0.0/dir/b.go", b"")],
            &[("example.com/m@v1.0.0/sub/go.mod", b"")],
            &[("example.com/m@v1.0.0/GO.MOD", b"")],
        ] {
            assert!(check(entries).is_err(), "{entries:?}");
        }
        assert!(matches!(
            check_zip(Cursor::new(b"not a zip".to_vec()), 9, "example.com/m", "v1.0.0"),
            Err(ZipError::Unreadable(_))
        ));
        assert!(matches!(
            check_zip(Cursor::new(Vec::new()), MAX_ZIP_FILE + 1, "example.com/m", "v1.0.0"),
            Err(ZipError::TooLarge(_))
        ));
    }
}
