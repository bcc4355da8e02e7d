//! Helpers for the Kubernetes Events both binaries publish.

/// A digest of an Event's note, to put in the Event's `action` (e.g. `Scaled-1a2b3c4d`).
///
/// kube-runtime's `Recorder` folds every Event with the same (type, reason, action, object)
/// into one series for minutes and keeps the *first* note, so "Scaled 1 -> 3" would hide a
/// later "Scaled 3 -> 0", and one name conflict would hide a different one. With a digest of
/// the note in the action, only identical notes are the same occurrence: a repeated identical
/// warning still aggregates, and every new message is its own Event. `kubectl get/describe`
/// do not show the action.
///
/// 32-bit FNV-1a: stable across builds, platforms and releases (unlike `std`'s hasher), and
/// no allocation.
///
/// ```
/// use zeroscale_config::note_digest;
///
/// assert_eq!(format!("{:08x}", note_digest("")), "811c9dc5");
/// assert_ne!(note_digest("Scaled 1 -> 3"), note_digest("Scaled 3 -> 0"));
/// ```
pub fn note_digest(note: &str) -> u32 {
    note.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_are_stable() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(note_digest(""), 0x811c_9dc5);
        assert_eq!(note_digest("a"), 0xe40c_292c);
        assert_eq!(note_digest("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn different_notes_differ() {
        let notes = [
            "Scaled 1 -> 3",
            "Scaled 3 -> 0",
            "Scaled 0 -> 1",
            "\"m\" is also claimed by a/m",
            "\"m\" is also claimed by b/m",
        ];
        let mut digests: Vec<u32> = notes.iter().map(|n| note_digest(n)).collect();
        digests.sort_unstable();
        digests.dedup();
        assert_eq!(digests.len(), notes.len());
    }
}
