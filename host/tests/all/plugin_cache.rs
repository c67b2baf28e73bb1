//! The compile cache: hits when nothing changed, recompiles a changed
//! component, and detects and replaces a corrupted entry.

use kiln_runtime::{CacheOutcome, CompileCache, Runtime};

use crate::common::wasm;

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_misses_and_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let sign = std::fs::read(wasm("kiln-plugin-sign")).unwrap();
    let noop = std::fs::read(wasm("kiln-test-noop")).unwrap();

    let rt = Runtime::new(CompileCache::open(&cache_dir).unwrap()).unwrap();
    assert_eq!(
        rt.load("sign", &sign).await.unwrap().cache,
        CacheOutcome::Miss
    );
    let mode = std::fs::metadata(&cache_dir).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );

    // A new process (runtime) finds the entry.
    let rt = Runtime::new(CompileCache::open(&cache_dir).unwrap()).unwrap();
    assert_eq!(
        rt.load("sign", &sign).await.unwrap().cache,
        CacheOutcome::Hit
    );

    // A changed component (the same plugin with a custom section added) is
    // a different entry, compiled afresh; so is another plugin.
    let mut changed = sign.clone();
    let name = b"kiln-test";
    changed.extend_from_slice(&[0x00, (1 + name.len() + 3) as u8, name.len() as u8]);
    changed.extend_from_slice(name);
    changed.extend_from_slice(b"abc");
    let reloaded = rt.load("sign-changed", &changed).await.unwrap();
    assert_eq!(reloaded.cache, CacheOutcome::Miss);
    assert_eq!(reloaded.info.name, "sign");
    assert_eq!(
        rt.load("noop", &noop).await.unwrap().cache,
        CacheOutcome::Miss
    );

    // Corrupt the sign entry: detected, recompiled, and the plugin works.
    let entry = rt.cache().entry_path(&engine_of(&rt), &sign).unwrap();
    let mut data = std::fs::read(&entry).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&entry, &data).unwrap();
    let reloaded = rt.load("sign", &sign).await.unwrap();
    assert_eq!(reloaded.cache, CacheOutcome::Replaced);
    assert_eq!(reloaded.info.name, "sign");
    assert_eq!(
        rt.load("sign", &sign).await.unwrap().cache,
        CacheOutcome::Hit
    );

    // A truncated entry too.
    std::fs::write(&entry, b"KILNCWC2").unwrap();
    assert_eq!(
        rt.load("sign", &sign).await.unwrap().cache,
        CacheOutcome::Replaced
    );
}

fn engine_of(rt: &Runtime) -> wasmtime::Engine {
    rt.engine().clone()
}
