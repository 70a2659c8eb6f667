//! docs/configuration.md is the generated reference, never stale.
//!
//! To update it: `FT_UPDATE_DOCS=1 cargo nextest run -p ft-config --test
//! reference_doc` (or `ft config reference > docs/configuration.md`).

use std::path::Path;

#[test]
fn committed_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let generated = ft_config::reference_markdown();
    if std::env::var_os("FT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).expect("write docs/configuration.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `FT_UPDATE_DOCS=1 cargo nextest run -p ft-config --test reference_doc` \
         and commit it",
        path.display()
    );
}
