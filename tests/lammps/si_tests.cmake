# CI tests of the shipped silicon potential potentials/si-sw-et.safetensors (label "lammps", "si"):
# tests/lammps/si_model_test.py runs our LAMMPS (LAMMPS_BINARY, PLUGIN package) with the plugin,
# and the teacher (Stillinger-Weber) with Debian's lmp (apt-get install lammps: /usr/bin/lmp and
# /usr/share/lammps/potentials/Si.sw). Meant to be included from tests/lammps/tests.cmake inside
# its `if(LAMMPS_BINARY AND TARGET ds4sciplugin)` block (needs Python3 and MPI found there).
set(DS4SCI_TEACHER_LMP "lmp" CACHE STRING
    "lmp with pair_style sw used as the teacher by the si_* tests (Debian's /usr/bin/lmp)")
foreach(case teacher nve)
  add_test(NAME lammps_si_${case}
           COMMAND Python3::Interpreter ${CMAKE_CURRENT_SOURCE_DIR}/lammps/si_model_test.py
                   --lmp ${LAMMPS_BINARY} --plugin $<TARGET_FILE:ds4sciplugin>
                   --model ${PROJECT_SOURCE_DIR}/potentials/si-sw-et.safetensors
                   --data ${CMAKE_CURRENT_SOURCE_DIR}/lammps/si_data
                   --teacher-lmp ${DS4SCI_TEACHER_LMP}
                   --workdir ${CMAKE_CURRENT_BINARY_DIR}/lammps/si_${case}
                   --mpiexec ${MPIEXEC_EXECUTABLE} ${case})
  set_tests_properties(lammps_si_${case} PROPERTIES LABELS "lammps;si" TIMEOUT 300)
endforeach()
