//! The module zip checks (`modzip::check_zip`) on arbitrary bytes: never a
//! panic, and what passes is hashed and within the size limits. (A zip
//! whose central directory lists nothing passes, as in x/mod's CheckZip.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use modcdn_shared::modzip;

fuzz_target!(|data: &[u8]| {
    if let Ok(checked) = modzip::check_zip(std::io::Cursor::new(data), data.len() as u64, "example.com/m", "v1.0.0") {
        assert!(checked.h1.starts_with("h1:") && checked.h1.len() == 47, "{}", checked.h1);
        assert!(checked.uncompressed <= 500 << 20);
    }
});
