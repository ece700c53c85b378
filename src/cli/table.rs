//! Plain text tables: a header row and left-aligned columns two spaces apart.

/// The rows as lines, each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (n, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if n + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
        }
        out
    };
    std::iter::once(line(header.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_under_their_headers() {
        let lines = super::render(
            &["ID", "APP", "STATUS"],
            &[
                vec!["1".into(), "Firefox".into(), "approved".into()],
                vec!["22".into(), "7-Zip".into(), "rolled_back".into()],
            ],
        );
        assert_eq!(
            lines,
            [
                "ID  APP      STATUS",
                "1   Firefox  approved",
                "22  7-Zip    rolled_back"
            ]
        );
    }
}
