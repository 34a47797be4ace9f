//! The CSV block cutter: any bytes, pushed in pieces of any size, parse exactly as the same
//! bytes pushed whole (the same rows, or a refusal either way), and never panic. Under
//! `cfg(fuzzing)` blocks are 64 bytes, so that small inputs are cut too.
#![no_main]

use kura_engine::load::{Ingest, UploadFormat};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kura_fuzz::only_uncontained_panics();
    let Some((&split, csv)) = data.split_first() else {
        return;
    };
    let whole = kura_engine::load::load(kura_fuzz::ehr(), UploadFormat::Csv, csv);
    let mut ingest = Ingest::new(kura_fuzz::ehr(), UploadFormat::Csv);
    let mut pieces = Ok(());
    for part in csv.chunks(usize::from(split).max(1)) {
        pieces = ingest.push(part);
        if pieces.is_err() {
            break;
        }
    }
    let pieces = pieces.and_then(|()| ingest.finish());
    match (whole, pieces) {
        (Ok(a), Ok(b)) => assert_eq!(
            kura_fuzz::rows(&a),
            kura_fuzz::rows(&b),
            "pieces parsed to other rows"
        ),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole: {:?}, pieces: {:?}", a.map(|_| ()), b.map(|_| ())),
    }
});
