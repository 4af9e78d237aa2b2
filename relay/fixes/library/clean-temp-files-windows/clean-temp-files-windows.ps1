# Delete old files from the Windows temporary folder, without following reparse points.
$age = 0
if (-not [int]::TryParse([string]$env:BACKLINE_PARAM_AGE_DAYS, [ref]$age) -or $age -lt 1 -or $age -gt 3650) {
    [Console]::Error.WriteLine('refused: AGE_DAYS is 1..3650'); exit 64
}
# from the OS, not from %SystemRoot%: a fix's environment holds only the contract's variables
$windows = [Environment]::GetFolderPath('Windows')
if (-not $windows -or -not [IO.Path]::IsPathRooted($windows)) { [Console]::Error.WriteLine('cannot find the Windows folder'); exit 1 }
$root = Join-Path $windows 'Temp'
$cutoff = (Get-Date).AddDays(-$age)
$deleted = 0; $bytes = 0; $skipped = 0
function Clean([string]$dir) {
    foreach ($item in Get-ChildItem -LiteralPath $dir -Force -ErrorAction SilentlyContinue) {
        if ($item.Attributes -band [IO.FileAttributes]::ReparsePoint) { continue }
        if ($item.PSIsContainer) {
            Clean $item.FullName
            if (-not (Get-ChildItem -LiteralPath $item.FullName -Force -ErrorAction SilentlyContinue) -and $item.LastWriteTime -lt $cutoff) {
                Remove-Item -LiteralPath $item.FullName -Force -ErrorAction SilentlyContinue
            }
        } elseif ($item.LastWriteTime -lt $cutoff) {
            try { $size = $item.Length; Remove-Item -LiteralPath $item.FullName -Force -ErrorAction Stop
                  $script:deleted++; $script:bytes += $size }
            catch { $script:skipped++ }
        }
    }
}
Clean $root
Write-Output "deleted $deleted files ($bytes bytes) older than $age days from $root; $skipped in use, skipped"
exit 0
