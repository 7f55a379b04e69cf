@echo off
rem Run the analysis as K shard processes on this machine, then merge and validate.
rem   run_parallel_4shards.bat [CONFIG] [K]      (defaults: config\proposal.yaml, 4)
rem A relative CONFIG is taken from the current directory when it exists there, else from the repository.
rem Unlike run_parallel_4shards.sh, CONFIG and K come first and no further flags are passed (untested).
setlocal
set "CONFIG=%~1"
if not "%CONFIG%"=="" if exist "%~f1" set "CONFIG=%~f1"
cd /d "%~dp0"
if /i "%CONFIG%"=="--help" (
  echo usage: run_parallel_4shards.bat [CONFIG] [K]   ^(defaults: config\proposal.yaml, 4^)
  if exist .venv\Scripts\python.exe .venv\Scripts\python.exe -m shardrun launch --help
  exit /b 0
)
if "%CONFIG%"=="" set "CONFIG=config\proposal.yaml"
set "SHARDS=%~2"
if "%SHARDS%"=="" set "SHARDS=4"
where java >nul 2>nul
if errorlevel 1 if "%JAVA_HOME%"=="" (
  echo error: no Java runtime found. Install Java 11 or newer ^(for example Eclipse Temurin 17^) or set JAVA_HOME. 1>&2
  exit /b 2
)
if not exist .venv\Scripts\python.exe (
  echo creating .venv ^(first use; takes a minute^) 1>&2
  py -3 -m venv .venv || python -m venv .venv || (echo error: could not create .venv; install Python 3.11 or newer 1>&2 & exit /b 2)
  .venv\Scripts\python.exe -m pip install -q --upgrade pip
  .venv\Scripts\python.exe -m pip install -q -e ".[test]" || exit /b 2
  .venv\Scripts\python.exe -m pip install -q --no-deps idtxl-uv==1.6.1 || exit /b 2
)
.venv\Scripts\python.exe -m shardrun launch --config "%CONFIG%" --shards %SHARDS% --merge
exit /b %ERRORLEVEL%
