//! What each fuzz target does with one input, shared by the cargo-fuzz targets
//! (`fuzz_targets/`) and by `tests/fuzz_regressions.rs`, which replays every input that
//! once crashed a target. Errors are fine; panics, hangs and huge allocations are bugs.

use std::path::Path;

use nydus_image::builder::source::stargz;
use nydus_image::format::blob_meta::{ChunkLocation, Header, CHUNK_INFO_V1_SIZE};
use nydus_image::reader::Image;
use nydus_image::storage::blobs::BlobSource;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFDIR: u32 = 0o040000;

/// The whole reader on a (mutated) bootstrap: open, check, the prefetch table, walk every
/// entry, read every file, xattr and symlink.
pub fn read_image(data: &[u8]) {
    let Ok(image) = Image::from_bytes(Path::new("fuzz.boot"), data.to_vec(), BlobSource::None)
    else {
        return;
    };
    let _ = nydus_image::ops::check::check(&image, true);
    // Also when the walk inside `check` fails first.
    let _ = image.prefetch_table();
    let _ = image.prefetch_paths();
    let _ = image.walk(|_, nid| {
        let st = image.stat(nid)?;
        let _ = image.xattrs(nid);
        match st.mode & S_IFMT {
            S_IFREG => {
                let _ = image.chunk_addrs(nid);
                let mut buf = [0u8; 4096];
                let _ = image.read(nid, 0, &mut buf);
            }
            S_IFLNK => {
                let _ = image.readlink(nid);
            }
            S_IFDIR => {
                for entry in image.read_dir(nid).unwrap_or_default() {
                    let _ = image.lookup(nid, &entry.name);
                }
            }
            _ => {}
        }
        Ok(())
    });
    inspect_and_stat(image);
}

/// Every `inspect` request over the image's entries, and `stat`'s sums of it.
fn inspect_and_stat(image: Image) {
    use nydus_image::ops::inspect::{Inspector, Reply, Request};
    let mut stat = nydus_image::ops::stat::StatBuilder::new(Default::default());
    let _ = stat.add_base(&image);
    let _ = stat.set_target(&image);
    let _ = stat.finish(true);
    let Ok(mut ins) = Inspector::new(image) else {
        return;
    };
    let ask = |ins: &mut Inspector, req: Request| {
        ins.execute(&req).inspect(|r| {
            let _ = (r.json(), r.text(true), r.text(false));
        })
    };
    for req in [
        Request::Stats,
        Request::Blobs,
        Request::Prefetch,
        Request::Chunk(0),
    ] {
        let _ = ask(&mut ins, req);
    }
    let Ok(Reply::Listing(entries)) = ask(&mut ins, Request::Ls) else {
        return;
    };
    for e in entries.iter().take(64) {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let _ = ask(&mut ins, Request::Stat(name.clone()));
        let _ = ask(&mut ins, Request::Icheck(e.ino));
        let _ = ask(&mut ins, Request::Cd(name));
        let _ = ask(&mut ins, Request::Ls);
        let _ = ask(&mut ins, Request::Stat(".".into()));
        let _ = ask(&mut ins, Request::Cd("..".into()));
    }
}

/// The blob's own metadata: the meta header and chunk info entries, which must encode
/// back to what they decoded from.
pub fn blob_meta(data: &[u8]) {
    let _ = Header::decode(data, 0);
    for entry in data.chunks_exact(CHUNK_INFO_V1_SIZE) {
        let loc = ChunkLocation::decode_v1(entry.try_into().expect("exact chunks"));
        let mut again = Vec::new();
        if loc.compressed_offset < 1 << 40 && loc.uncompressed_offset.is_multiple_of(4096) {
            loc.encode_v1(&mut again);
            assert_eq!(
                ChunkLocation::decode_v1(again.as_slice().try_into().unwrap()),
                loc
            );
        }
    }
}

/// eStargz TOCs: parse, lay out a bootstrap of what parses, and read it back whole; a
/// bootstrap we write that our own `check` rejects is a bug too.
pub fn stargz_toc(data: &[u8]) {
    let path = Path::new("fuzz.toc.json");
    let Ok(layer) = stargz::parse(path, data, 0, None, None) else {
        return;
    };
    let described = stargz::describe(
        layer,
        None,
        Vec::new(),
        &"0".repeat(64),
        &Default::default(),
    )
    .expect("a TOC that parses describes");
    let image = Image::from_bytes(
        Path::new("fuzz.boot"),
        described.bootstrap,
        BlobSource::None,
    )
    .expect("our own bootstrap opens");
    nydus_image::ops::check::check(&image, false).expect("our own bootstrap checks");
}

/// A tar layer built as `create --type tar-rafs` builds it: the first byte picks plain
/// or gzip-compressed input, the rest is the stream. Errors are fine; a panic is a bug, and
/// an image that builds must open, pass our own check, and read back every file whole
/// with every chunk's digest verified.
pub fn tar_layer(data: &[u8]) {
    use nydus_image::builder::source::tar::TarFormat;
    use nydus_image::builder::{build_from, BlobTarget, BootstrapTarget, BuildOptions, Source};

    let Some((&settings, stream)) = data.split_first() else {
        return;
    };
    let format = if settings & 1 == 0 {
        TarFormat::Tar
    } else {
        TarFormat::TarGz
    };
    let dir = tempfile::Builder::new()
        .prefix("fuzz-tar-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("scratch directory");
    let layer = dir.path().join("layer.tar");
    std::fs::write(&layer, stream).expect("write the layer");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir(&blobs).expect("blob directory");
    let boot = dir.path().join("boot");
    let opts = BuildOptions {
        chunk_size: 0x1000,
        threads: 1,
        ..BuildOptions::default()
    };
    let built = build_from(
        &Source::Tar(layer, format),
        &BootstrapTarget::File(boot.clone()),
        &BlobTarget::Dir(blobs.clone()),
        &opts,
        &|_| {},
    );
    if built.is_err() {
        return;
    }
    let mut image = Image::open(&boot, BlobSource::Dir(blobs)).expect("our own bootstrap opens");
    image.validate = true;
    nydus_image::ops::check::check(&image, false).expect("our own bootstrap checks");
    nydus_image::ops::check::read_all_files(&image).expect("every file reads back");
}

/// The builder fed a random tree description: the bytes say what to create (directories,
/// files of sizes around 4 KiB chunk boundaries, sparse files, symlinks, hard links,
/// FIFOs, xattrs), the tree is built with 4 KiB chunks, and the image must read back
/// exactly what was created.
pub fn build_tree(data: &[u8]) {
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let ops = (rest.len() / 4).min(48);
    let mut bytes = rest.iter().copied().chain(std::iter::repeat(0));
    let mut next = || bytes.next().unwrap_or(0);
    let scratch = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let src = scratch.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut dirs = vec![src.clone()];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut all: Vec<PathBuf> = Vec::new();
    for _ in 0..ops {
        let op = next();
        let parent = dirs[next() as usize % dirs.len()].clone();
        let name_len = 1 + next() as usize % 10;
        let name: Vec<u8> = (0..name_len)
            .map(|_| match next() {
                0 | b'/' => b'_',
                b => b,
            })
            .collect();
        if name == b"." || name == b".." {
            continue;
        }
        let path = parent.join(std::ffi::OsStr::from_bytes(&name));
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        let size = |hi: u8, lo: u8, scale: u8| -> u64 {
            let base = [1u64, 61, 4093, 4096][scale as usize % 4];
            (u16::from_le_bytes([lo, hi]) as u64 % 40) * base + (hi as u64 % 3)
        };
        match op % 7 {
            0 => {
                fs::create_dir(&path).unwrap();
                dirs.push(path.clone());
            }
            1 => {
                let len = size(next(), next(), op >> 3);
                let seed = next();
                let body: Vec<u8> = (0..len)
                    .map(|i| ((i as u32).wrapping_mul(seed as u32 | 1) >> 7) as u8)
                    .collect();
                fs::write(&path, body).unwrap();
                files.push(path.clone());
            }
            2 => {
                let target: Vec<u8> = (0..1 + next() % 40).map(|_| next().max(1)).collect();
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path).unwrap();
            }
            3 if !files.is_empty() => {
                let first = files[next() as usize % files.len()].clone();
                fs::hard_link(first, &path).unwrap();
            }
            4 => {
                let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
                // SAFETY: c is a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
            }
            5 if !all.is_empty() => {
                let on = all[next() as usize % all.len()].clone();
                let c = std::ffi::CString::new(on.as_os_str().as_bytes()).unwrap();
                let key = std::ffi::CString::new(format!("user.k{}", next() % 4)).unwrap();
                let value: Vec<u8> = (0..next() as usize * 3).map(|i| i as u8).collect();
                // SAFETY: valid NUL-terminated strings and a buffer of the given length.
                unsafe {
                    libc::lsetxattr(
                        c.as_ptr(),
                        key.as_ptr(),
                        value.as_ptr() as *const libc::c_void,
                        value.len(),
                        0,
                    )
                };
                continue;
            }
            6 => {
                let mut f = fs::File::create(&path).unwrap();
                let at = size(next(), next(), 3) * 4;
                f.seek(SeekFrom::Start(at)).unwrap();
                f.write_all(&[next() | 1; 100]).unwrap();
                f.set_len(at + 100 + size(next(), 0, 3)).unwrap();
                files.push(path.clone());
            }
            _ => continue,
        }
        all.push(path);
    }

    let opts = nydus_image::builder::BuildOptions {
        compressor: [
            nydus_image::format::Compressor::None,
            nydus_image::format::Compressor::Lz4Block,
            nydus_image::format::Compressor::Zstd,
        ][settings as usize % 3],
        chunk_size: 0x1000,
        threads: 1 + (settings as usize >> 4) % 2,
        // A plain tree: names such as `.wh.x` are files here, not OCI whiteouts.
        whiteout_spec: nydus_image::builder::overlay::WhiteoutSpec::None,
        ..Default::default()
    };
    let boot = scratch.path().join("boot");
    let blobs = scratch.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    nydus_image::builder::build(
        &src,
        &boot,
        &nydus_image::builder::BlobTarget::Dir(blobs.clone()),
        &opts,
        &|_| {},
    )
    .expect("a plain tree builds");
    let image = Image::open(&boot, BlobSource::Dir(blobs)).expect("our image opens");
    nydus_image::ops::check::check(&image, false).expect("our image checks");

    // Everything created reads back the same; hard links share an inode.
    let mut by_ino: BTreeMap<u64, u64> = BTreeMap::new();
    for path in &all {
        let rel = path.strip_prefix(&src).unwrap();
        let mut image_path = b"/".to_vec();
        image_path.extend_from_slice(rel.as_os_str().as_bytes());
        let nid = image
            .resolve(&image_path)
            .expect("resolve")
            .unwrap_or_else(|| panic!("{} missing from the image", rel.display()));
        let meta = fs::symlink_metadata(path).unwrap();
        let st = image.stat(nid).unwrap();
        assert_eq!(st.mode, meta.mode(), "{}: mode", rel.display());
        assert_eq!(st.nlink as u64, meta.nlink(), "{}: nlink", rel.display());
        assert_eq!(
            *by_ino.entry(meta.ino()).or_insert(st.ino),
            st.ino,
            "{}: hard links split",
            rel.display()
        );
        if meta.is_file() {
            assert_eq!(st.size, meta.len(), "{}: size", rel.display());
            let want = fs::read(path).unwrap();
            let mut got = vec![0u8; want.len()];
            let mut at = 0;
            while at < got.len() {
                let n = image.read(nid, at as u64, &mut got[at..]).expect("read");
                assert!(n > 0, "{}: short read at {at}", rel.display());
                at += n;
            }
            assert!(got == want, "{}: content differs", rel.display());
        } else if meta.file_type().is_symlink() {
            let want = fs::read_link(path).unwrap();
            assert_eq!(
                image.readlink(nid).unwrap(),
                want.as_os_str().as_bytes(),
                "{}: target",
                rel.display()
            );
        }
        let xattrs = image.xattrs(nid).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut names = vec![0u8; 4096];
        // SAFETY: valid path and buffer.
        let n = unsafe {
            libc::llistxattr(
                c.as_ptr(),
                names.as_mut_ptr() as *mut libc::c_char,
                names.len(),
            )
        };
        let count = if n > 0 {
            names[..n as usize]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .count()
        } else {
            0
        };
        assert_eq!(xattrs.len(), count, "{}: xattr count", rel.display());
    }
}
