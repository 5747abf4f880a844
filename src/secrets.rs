//! Secrets given in the environment must not stay readable there: the kernel shows a process's
//! environment as it was at exec in `/proc/<pid>/environ` (to every process of the same user,
//! the agents included), whatever the process later removes from its own copy. (Tested by the
//! integration tests, which read `/proc/<pid>/environ` of a running worker: a unit test would
//! change the environment of a multi-threaded test process.)

use std::ffi::{CStr, CString};

/// Takes the variables `names` out of this process's environment and answers their values.
/// Each value's bytes are overwritten with zeros where they lie, in the block the kernel shows
/// as `/proc/<pid>/environ`, and the variable is removed from the environment that child
/// processes inherit.
///
/// Call it first thing in `main`, while the process has one thread: nothing may read or change
/// the environment at the same time.
pub fn take_from_environment(names: &[String]) -> Vec<(String, String)> {
    let mut taken = Vec::new();
    for name in names {
        let Ok(c_name) = CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: single-threaded (see above); getenv's pointer is valid until the variable is
        // changed, and it points at the value's bytes, NUL-terminated, in writable memory (the
        // initial environment lies on the stack; later ones in allocated memory).
        unsafe {
            let value = libc::getenv(c_name.as_ptr());
            if value.is_null() {
                continue;
            }
            let bytes = CStr::from_ptr(value).to_bytes();
            taken.push((name.clone(), String::from_utf8_lossy(bytes).into_owned()));
            std::ptr::write_bytes(value, 0, bytes.len());
        }
        std::env::remove_var(name);
    }
    taken
}
