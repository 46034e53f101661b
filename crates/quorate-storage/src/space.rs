//! Free-space checks: a nearly full disk is reported as a typed error so that the node refuses
//! new work instead of crashing halfway through a write.

use crate::error::StoreError;
use std::path::Path;

/// Bytes available to an unprivileged process on the file system holding `path`.
pub fn free_space_bytes(path: &Path) -> Result<u64, StoreError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| StoreError::Io(format!("statvfs {}: {e}", path.display())))?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// `Ok(())` if at least `floor` bytes are free on the file system holding `path`, else
/// [`StoreError::BelowFreeSpaceFloor`]. A floor of zero is never checked.
pub fn check_free_space(path: &Path, floor: u64) -> Result<(), StoreError> {
    if floor == 0 {
        return Ok(());
    }
    let free = free_space_bytes(path)?;
    if free < floor {
        return Err(StoreError::BelowFreeSpaceFloor { free, floor });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_enforced() {
        let dir = std::env::temp_dir();
        let free = free_space_bytes(&dir).unwrap();
        assert!(free > 0);
        check_free_space(&dir, 0).unwrap();
        check_free_space(&dir, 1).unwrap();
        assert!(matches!(
            check_free_space(&dir, u64::MAX),
            Err(StoreError::BelowFreeSpaceFloor { floor: u64::MAX, .. })
        ));
    }
}
